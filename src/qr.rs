//! `wecom-acq qr`: a link's URL as a QR code (PNG, SVG or terminal text), from a URL given
//! on the command line or from an AcquisitionLink's status in a cluster.

use std::path::PathBuf;

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, ValueEnum};
use kube::Api;
use qrcode::{Color, EcLevel, QrCode};

use crate::api::AcquisitionLink;

/// Pixels per QR module in a PNG: a printable size for posters at the usual link lengths.
const PNG_MODULE_PIXELS: usize = 8;
/// Light modules around the code, as the QR standard asks for scanners to find it.
const QUIET_ZONE: usize = 4;

#[derive(Args, Debug)]
pub struct QrArgs {
    /// The URL to encode; with -n, the name of the AcquisitionLink whose URL to encode.
    pub target: String,
    /// Read the URL of the AcquisitionLink TARGET in this namespace from the cluster
    /// (KUBECONFIG or the in-cluster config): status.url, or status.channelUrls with
    /// --channel.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// The channel URL (one of the link's spec.channels) instead of the link's own URL.
    #[arg(long, requires = "namespace")]
    pub channel: Option<String>,
    /// Output format. Default: from --out's extension (.svg: svg, otherwise png), or
    /// terminal when printing.
    #[arg(long, value_enum)]
    pub format: Option<QrFormat>,
    /// Write to this file instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum QrFormat {
    Png,
    Svg,
    Terminal,
}

/// The format asked for, or the one --out's extension implies, or terminal text.
pub fn chosen_format(format: Option<QrFormat>, out: Option<&std::path::Path>) -> QrFormat {
    format.unwrap_or_else(|| match out {
        None => QrFormat::Terminal,
        Some(path)
            if path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("svg")) =>
        {
            QrFormat::Svg
        }
        Some(_) => QrFormat::Png,
    })
}

/// `url` as a QR code in `format` (medium error correction: survives print smudges
/// without making long channel URLs too dense).
pub fn render(url: &str, format: QrFormat) -> anyhow::Result<Vec<u8>> {
    let code = QrCode::with_error_correction_level(url.as_bytes(), EcLevel::M)
        .map_err(|err| anyhow!("cannot encode {} bytes as a QR code: {err}", url.len()))?;
    Ok(match format {
        QrFormat::Svg => code
            .render::<qrcode::render::svg::Color>()
            .min_dimensions(256, 256)
            .build()
            .into_bytes(),
        QrFormat::Terminal => {
            // Light modules drawn as blocks: readable on the usual dark terminal.
            let mut text = code
                .render::<qrcode::render::unicode::Dense1x2>()
                .dark_color(qrcode::render::unicode::Dense1x2::Light)
                .light_color(qrcode::render::unicode::Dense1x2::Dark)
                .build();
            text.push('\n');
            text.into_bytes()
        }
        QrFormat::Png => png_bytes(&code)?,
    })
}

/// A greyscale PNG of `code`, black on white with a quiet zone.
fn png_bytes(code: &QrCode) -> anyhow::Result<Vec<u8>> {
    let modules = code.width();
    let colors = code.to_colors();
    let side = (modules + 2 * QUIET_ZONE) * PNG_MODULE_PIXELS;
    let mut pixels = vec![255u8; side * side];
    for (i, color) in colors.iter().enumerate() {
        if *color != Color::Dark {
            continue;
        }
        let (x0, y0) = (
            (i % modules + QUIET_ZONE) * PNG_MODULE_PIXELS,
            (i / modules + QUIET_ZONE) * PNG_MODULE_PIXELS,
        );
        for y in y0..y0 + PNG_MODULE_PIXELS {
            pixels[y * side + x0..y * side + x0 + PNG_MODULE_PIXELS].fill(0);
        }
    }
    let side32 = u32::try_from(side).context("QR code too large for a PNG")?;
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, side32, side32);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().context("writing the PNG header")?;
    writer
        .write_image_data(&pixels)
        .context("writing the PNG image")?;
    writer.finish().context("finishing the PNG")?;
    Ok(out)
}

/// The URL to encode from a link's status: its own URL, or the URL of `channel`.
pub fn link_url(link: &AcquisitionLink, channel: Option<&str>) -> anyhow::Result<String> {
    let name = link.metadata.name.as_deref().unwrap_or_default();
    let namespace = link.metadata.namespace.as_deref().unwrap_or_default();
    let status = link.status.as_ref();
    match channel {
        None => status.and_then(|s| s.url.clone()).ok_or_else(|| {
            anyhow!(
                "AcquisitionLink {namespace}/{name} has no status.url yet: wait until it is Ready \
                 (kubectl get acquisitionlink -n {namespace} {name})"
            )
        }),
        Some(channel) => status
            .and_then(|s| s.channel_urls.iter().find(|c| c.channel == channel))
            .map(|c| c.url.clone())
            .ok_or_else(|| {
                let known: Vec<&str> = status
                    .map(|s| s.channel_urls.iter().map(|c| c.channel.as_str()).collect())
                    .unwrap_or_default();
                anyhow!(
                    "AcquisitionLink {namespace}/{name} has no URL for channel {channel:?} \
                     (status.channelUrls has {known:?}); add it to spec.channels and wait until \
                     the link is Ready"
                )
            }),
    }
}

/// The URL of AcquisitionLink `namespace/name` (or of its `channel`) as its status has it.
pub async fn cluster_url(
    client: kube::Client,
    namespace: &str,
    name: &str,
    channel: Option<&str>,
) -> anyhow::Result<String> {
    let api: Api<AcquisitionLink> = Api::namespaced(client, namespace);
    let link = api
        .get(name)
        .await
        .with_context(|| format!("reading AcquisitionLink {namespace}/{name}"))?;
    link_url(&link, channel)
}

/// The command: find the URL, render it, write it.
pub async fn run(args: QrArgs) -> anyhow::Result<()> {
    let url = match &args.namespace {
        None => args.target.clone(),
        Some(namespace) => {
            let client = kube::Client::try_default()
                .await
                .context("connecting to the cluster (KUBECONFIG or in-cluster config)")?;
            cluster_url(client, namespace, &args.target, args.channel.as_deref()).await?
        }
    };
    if url.is_empty() {
        bail!("nothing to encode: the URL is empty");
    }
    let bytes = render(&url, chosen_format(args.format, args.out.as_deref()))?;
    match &args.out {
        Some(path) => std::fs::write(path, bytes)
            .with_context(|| format!("writing the QR code to {}", path.display())),
        None => {
            use std::io::Write as _;
            std::io::stdout()
                .write_all(&bytes)
                .context("writing the QR code to stdout")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AcquisitionLinkStatus, ChannelUrl};

    /// What an independent decoder reads back from a PNG.
    fn decode_png(bytes: &[u8]) -> String {
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut pixels).unwrap();
        assert_eq!(info.color_type, png::ColorType::Grayscale);
        let (w, h) = (info.width as usize, info.height as usize);
        let mut image = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| pixels[y * w + x]);
        let grids = image.detect_grids();
        assert_eq!(grids.len(), 1, "one QR code in the image");
        grids[0].decode().unwrap().1
    }

    #[test]
    fn png_decodes_to_the_exact_channel_url() {
        let url = "https://work.weixin.qq.com/ca/cawcde1234567890?customer_channel=%E5%AE%98%E7%BD%91-poster_2";
        assert_eq!(decode_png(&render(url, QrFormat::Png).unwrap()), url);
    }

    #[test]
    fn svg_and_terminal_render_the_code() {
        let svg =
            String::from_utf8(render("https://x.example/ca/1", QrFormat::Svg).unwrap()).unwrap();
        assert!(svg.starts_with("<?xml") && svg.contains("<svg"), "{svg}");
        let text = String::from_utf8(render("https://x.example/ca/1", QrFormat::Terminal).unwrap())
            .unwrap();
        assert!(text.lines().count() > 10 && text.contains('█'), "{text}");
    }

    #[test]
    fn format_follows_the_flag_then_the_file_extension() {
        use std::path::Path;
        assert_eq!(chosen_format(None, None), QrFormat::Terminal);
        assert_eq!(chosen_format(None, Some(Path::new("a.SVG"))), QrFormat::Svg);
        assert_eq!(chosen_format(None, Some(Path::new("a.png"))), QrFormat::Png);
        assert_eq!(
            chosen_format(Some(QrFormat::Svg), Some(Path::new("a.png"))),
            QrFormat::Svg
        );
    }

    #[test]
    fn link_url_reads_status_and_names_what_is_missing() {
        let spec = crate::api::AcquisitionLinkSpec {
            app_ref: crate::api::AppRef { name: "app".into() },
            link_name: "Poster".into(),
            range: crate::api::LinkRangeSpec {
                user_list: vec!["zhangsan".into()],
                department_list: vec![],
            },
            skip_verify: true,
            priority_option: None,
            mark_source: None,
            channels: vec!["a".into()],
            deletion_policy: Default::default(),
            on_remote_delete: Default::default(),
            link_id: None,
            management_policy: Default::default(),
        };
        let mut link = AcquisitionLink::new("poster", spec);
        link.metadata.namespace = Some("sales".into());
        let err = link_url(&link, None).unwrap_err().to_string();
        assert!(
            err.contains("sales/poster") && err.contains("status.url"),
            "{err}"
        );
        link.status = Some(AcquisitionLinkStatus {
            url: Some("https://work.weixin.qq.com/ca/L1".into()),
            channel_urls: vec![ChannelUrl {
                channel: "a".into(),
                url: "https://work.weixin.qq.com/ca/L1?customer_channel=a".into(),
                scheme_url: String::new(),
            }],
            ..Default::default()
        });
        assert_eq!(
            link_url(&link, None).unwrap(),
            "https://work.weixin.qq.com/ca/L1"
        );
        assert_eq!(
            link_url(&link, Some("a")).unwrap(),
            "https://work.weixin.qq.com/ca/L1?customer_channel=a"
        );
        let err = link_url(&link, Some("b")).unwrap_err().to_string();
        assert!(err.contains("\"b\"") && err.contains("[\"a\"]"), "{err}");
    }
}
