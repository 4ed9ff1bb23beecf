//! `wecom-acq export customers|statistics`: what the links bring in, as CSV or JSON lines
//! (Workflow B), for every link the app sees (A1) or the ones named.
//!
//! Streaming: rows are written as WeCom's pages arrive. Several links are in flight at once
//! to hide WeCom's latency, never faster than the app's `requestsPerMinute` (the client's
//! budget enforces it); each link's rows are written together, in A1 order. A link waiting
//! its turn holds at most [`ROWS_AHEAD`] rows, so memory stays bounded however many
//! customers there are. A frequency limit (45009) is waited out by the client, which
//! repeats the same page (the same cursor): no row is lost or written twice.

pub mod rows;

use std::io::{IsTerminal as _, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use futures::{Stream, StreamExt as _, TryStreamExt as _};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;

use crate::api::WeComApp;
use crate::gitops::FilesArgs;
use crate::gitops::changes::{self, Connection};
use crate::gitops::manifest::{Loaded, Manifests};
use crate::reconcile::plan::StatsWindow;
use crate::wecom::client::{CUSTOMER_PAGE_LIMIT, WeComClient};
use crate::wecom::error::WeComError;
use crate::wecom::retry::RetryPolicy;
use rows::{CustomerRow, Format, RowWriter, StatisticsRow};

/// Rows a link may fetch ahead while another link's rows are written: one A6 page.
pub const ROWS_AHEAD: usize = CUSTOMER_PAGE_LIMIT as usize;
/// Links in flight at once by default.
pub const DEFAULT_CONCURRENCY: usize = 16;
/// Statistics span by default, in days.
pub const DEFAULT_DAYS: u32 = 30;

/// What to export.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Export {
    /// One row per customer (A6): link_id,link_name,external_userid,userid,chat_status,state.
    Customers,
    /// One row per link and window of at most 30 days (A7):
    /// link_id,link_name,from,to,clicks,new_customers.
    Statistics,
}

/// Flags of `export`.
#[derive(clap::Args, Debug, Clone)]
pub struct ExportArgs {
    #[arg(value_enum)]
    pub what: Export,
    #[command(flatten)]
    pub files: FilesArgs,
    #[arg(long, value_enum, default_value_t = Format::Csv)]
    pub format: Format,
    /// statistics: the last N days up to today, China time (1 to 180; default 30).
    #[arg(long, value_name = "N")]
    pub days: Option<u32>,
    /// Only these link ids (repeatable); default: every link the app lists (A1).
    #[arg(long = "link", value_name = "ID", num_args = 1..)]
    pub links: Vec<String>,
    /// Write to FILE (replaced only when the export succeeds) instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// The WeComApp to export (in -n's namespace); needed when the files hold several and
    /// --link is given.
    #[arg(long, value_name = "NAME")]
    pub app: Option<String>,
    /// Links in flight at once. The app's requestsPerMinute caps the calls whatever this
    /// says; more links in flight only hide WeCom's latency.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CONCURRENCY,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=64))]
    pub concurrency: usize,
    /// How long one call keeps retrying a frequency limit (45009), a busy or unreachable
    /// WeCom before the export fails (e.g. 30s, 5m). The same page is asked for again, so
    /// no row is lost or repeated.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_RETRY_FOR,
          value_parser = humantime::parse_duration)]
    pub retry_for: Duration,
}

/// How long one call keeps retrying by default.
pub const DEFAULT_RETRY_FOR: &str = "2m";

/// Retries of an export: a frequency limit (45009, e.g. from a controller sharing the
/// corp's limit) blocks the caller for up to a minute in WeCom, so an export waits it out,
/// for up to `retry_for` per call, rather than losing a long run to it.
pub fn export_retry_policy(retry_for: Duration) -> RetryPolicy {
    RetryPolicy {
        max_attempts: 20,
        base_delay: Duration::from_millis(500),
        max_delay: Duration::from_secs(30),
        max_elapsed: retry_for,
    }
}

/// `wecom-acq export`.
pub async fn run(args: ExportArgs) -> anyhow::Result<()> {
    let windows = match (args.what, args.days) {
        (Export::Customers, Some(_)) => {
            bail!("--days applies to `export statistics` only; customers are exported whole")
        }
        (Export::Customers, None) => vec![],
        (Export::Statistics, days) => {
            rows::statistics_windows(unix_now(), days.unwrap_or(DEFAULT_DAYS))
                .map_err(|e| anyhow!(e))?
        }
    };
    let Some(manifests) = crate::gitops::read_files(&args.files) else {
        bail!("the files are invalid (see above); nothing was exported");
    };
    let apps = chosen_apps(&manifests, &args)?;
    let connection = Connection {
        api_base_url: args.files.api_base_url.clone(),
        retry: export_retry_policy(args.retry_for),
    };
    match &args.out {
        None => {
            let out = std::io::BufWriter::new(std::io::stdout());
            export_all(&manifests, &apps, &connection, &args, &windows, out).await?;
        }
        Some(path) => {
            let partial = partial_path(path);
            let file = std::fs::File::create(&partial)
                .with_context(|| format!("cannot create {}", partial.display()))?;
            let done = export_all(
                &manifests,
                &apps,
                &connection,
                &args,
                &windows,
                std::io::BufWriter::new(file),
            )
            .await;
            match done {
                Ok(()) => std::fs::rename(&partial, path).with_context(|| {
                    format!("cannot move {} to {}", partial.display(), path.display())
                })?,
                Err(e) => {
                    let _ = std::fs::remove_file(&partial);
                    return Err(e.context(format!("{} was not written", path.display())));
                }
            }
        }
    }
    Ok(())
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `FILE.partial` beside FILE: the export writes there and renames on success, so a failed
/// run never leaves a truncated FILE behind (nor replaces a good one).
fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

/// The apps to export: `--app`, else every WeComApp of the files.
fn chosen_apps<'a>(
    manifests: &'a Manifests,
    args: &ExportArgs,
) -> anyhow::Result<Vec<&'a Loaded<WeComApp>>> {
    let apps: Vec<&Loaded<WeComApp>> = match &args.app {
        Some(name) => {
            let key = (args.files.namespace.clone(), name.clone());
            let app = manifests.apps.get(&key).ok_or_else(|| {
                anyhow!(
                    "--app {name}: the files hold no WeComApp {}/{name}; add its YAML with -f \
                     (or choose the namespace with -n)",
                    key.0
                )
            })?;
            vec![app]
        }
        None => manifests.apps.values().collect(),
    };
    if apps.is_empty() {
        bail!("the files hold no WeComApp: add the app's YAML and its Secret with -f");
    }
    if apps.len() > 1 && !args.links.is_empty() {
        let names: Vec<String> = apps.iter().map(|a| a.key.to_string()).collect();
        bail!(
            "--link needs one app, the files hold {}: choose one with --app",
            names.join(", ")
        );
    }
    Ok(apps)
}

/// A link's rows, or a note that it was skipped, or the error that stops the export.
enum Piece<R> {
    Row(R),
    Skipped(String),
}

type Pieces<R> = mpsc::Receiver<anyhow::Result<Piece<R>>>;

async fn export_all<W: Write>(
    manifests: &Manifests,
    apps: &[&Loaded<WeComApp>],
    connection: &Connection,
    args: &ExportArgs,
    windows: &[StatsWindow],
    out: W,
) -> anyhow::Result<()> {
    let header: &[&str] = match args.what {
        Export::Customers => &CustomerRow::HEADER,
        Export::Statistics => &StatisticsRow::HEADER,
    };
    let mut writer = RowWriter::new(out, args.format, header)?;
    let progress = progress_bar();
    for app in apps {
        let (client, base_url) =
            changes::client_for(manifests, app, connection).map_err(|e| anyhow!(e))?;
        let named = !args.links.is_empty();
        let ids: Vec<String> = if named {
            args.links.clone()
        } else {
            client.list_links().try_collect().await.map_err(|e| {
                anyhow!(
                    "listing the links of {} at {base_url} failed: {e}; check the app's \
                     corpId, Secret and apiBaseUrl",
                    app.key
                )
            })?
        };
        progress.inc_length(ids.len() as u64);
        let context = LinkContext {
            client,
            app: app.key.to_string(),
            named,
        };
        match args.what {
            Export::Customers => {
                let links = in_flight(ids, args.concurrency, |id| {
                    spawn_link(customers_of(context.clone(), id))
                });
                write_links(links, &mut writer, &progress).await?;
            }
            Export::Statistics => {
                let links = in_flight(ids, args.concurrency, |id| {
                    spawn_link(statistics_of(context.clone(), id, windows.to_vec()))
                });
                write_links(links, &mut writer, &progress).await?;
            }
        }
    }
    progress.finish_and_clear();
    let rows = writer.rows();
    writer.finish()?;
    eprintln!("exported {rows} row{}", if rows == 1 { "" } else { "s" });
    Ok(())
}

/// A bar on stderr when it is a terminal; nothing otherwise (logs and pipes stay clean).
fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} links {elapsed}") {
        bar.set_style(style);
    }
    bar
}

/// Each link's receiver in A1 order, with at most `concurrency` links started ahead of the
/// one being written (a link starts when it enters the window, so work stays bounded).
fn in_flight<R, F>(ids: Vec<String>, concurrency: usize, start: F) -> impl Stream<Item = Pieces<R>>
where
    F: FnMut(String) -> Pieces<R>,
{
    futures::stream::iter(ids)
        .map(start)
        .map(futures::future::ready)
        .buffered(concurrency)
}

/// Writes each link's rows as they arrive, one link after the other.
async fn write_links<R: serde::Serialize, W: Write>(
    links: impl Stream<Item = Pieces<R>>,
    writer: &mut RowWriter<W>,
    progress: &ProgressBar,
) -> anyhow::Result<()> {
    futures::pin_mut!(links);
    while let Some(mut pieces) = links.next().await {
        while let Some(piece) = pieces.recv().await {
            match piece? {
                Piece::Row(row) => writer.write(&row)?,
                Piece::Skipped(note) => progress.suspend(|| eprintln!("note: {note}")),
            }
        }
        progress.inc(1);
    }
    Ok(())
}

/// Runs one link's producer on its own task, its rows through a bounded channel.
fn spawn_link<R, F>(produce: F) -> Pieces<R>
where
    R: Send + 'static,
    F: FnOnce(Rows<R>) -> futures::future::BoxFuture<'static, ()>,
{
    let (tx, rx) = mpsc::channel(ROWS_AHEAD);
    tokio::spawn(produce(Rows(tx)));
    rx
}

/// The sending side of one link: `false` once the writer stopped listening.
struct Rows<R>(mpsc::Sender<anyhow::Result<Piece<R>>>);

impl<R> Rows<R> {
    async fn send(&self, piece: anyhow::Result<Piece<R>>) -> bool {
        self.0.send(piece).await.is_ok()
    }
}

/// What every link's producer needs.
#[derive(Clone)]
struct LinkContext {
    client: WeComClient,
    /// `WeComApp ns/name`, for messages.
    app: String,
    /// The ids came from --link: a link WeCom does not know is an error, not a note.
    named: bool,
}

impl LinkContext {
    /// The link's name (A2), or the piece to send instead: a note for a listed link that
    /// is gone (deleted between A1 and A2), else the error.
    fn unreadable<R>(&self, id: &str, e: WeComError) -> anyhow::Result<Piece<R>> {
        if !self.named && e.errcode().is_some() && !e.is_retryable() {
            Ok(Piece::Skipped(format!(
                "link {id} of {} was listed but cannot be read any more ({e}); skipped",
                self.app
            )))
        } else if self.named {
            Err(anyhow!(
                "--link {id}: reading the link from {} failed: {e}; check the id",
                self.app
            ))
        } else {
            Err(anyhow!(
                "reading link {id} of {} failed: {e}; run the export again",
                self.app
            ))
        }
    }
}

fn customers_of(
    context: LinkContext,
    id: String,
) -> impl FnOnce(Rows<CustomerRow>) -> futures::future::BoxFuture<'static, ()> {
    move |rows| {
        Box::pin(async move {
            let client = &context.client;
            let customers = client.customers(&id);
            futures::pin_mut!(customers);
            // A2 (the name) and the first A6 page together: one round trip, not two.
            let (link, first) = futures::join!(client.get_link(&id), customers.next());
            let name = match link {
                Ok(link) => link.link_name,
                Err(e) => {
                    rows.send(context.unreadable(&id, e)).await;
                    return;
                }
            };
            let mut next = first;
            while let Some(customer) = next {
                let piece = customer
                    .map(|c| Piece::Row(CustomerRow::new(&id, &name, c)))
                    .map_err(|e| {
                        anyhow!(
                            "reading the customers of link {id} ({name:?}) of {} failed: {e}",
                            context.app
                        )
                    });
                let failed = piece.is_err();
                if !rows.send(piece).await || failed {
                    return;
                }
                next = customers.next().await;
            }
        })
    }
}

fn statistics_of(
    context: LinkContext,
    id: String,
    windows: Vec<StatsWindow>,
) -> impl FnOnce(Rows<StatisticsRow>) -> futures::future::BoxFuture<'static, ()> {
    move |rows| {
        Box::pin(async move {
            let client = &context.client;
            let name = match client.get_link(&id).await {
                Ok(link) => link.link_name,
                Err(e) => {
                    rows.send(context.unreadable(&id, e)).await;
                    return;
                }
            };
            // The windows of one link are independent calls: all in flight, rows in order.
            let link_id = id.as_str();
            let answers = futures::stream::iter(windows)
                .map(|w| async move {
                    let answer = client.statistic(link_id, w.start_time, w.end_time).await;
                    (w, answer)
                })
                .buffered(rows::MAX_STATISTICS_DAYS.div_ceil(rows::MAX_WINDOW_DAYS) as usize);
            futures::pin_mut!(answers);
            while let Some((window, answer)) = answers.next().await {
                let piece = answer
                    .map(|a| {
                        Piece::Row(StatisticsRow {
                            link_id: id.clone(),
                            link_name: name.clone(),
                            from: window.from.clone(),
                            to: window.to.clone(),
                            clicks: a.click_link_customer_cnt,
                            new_customers: a.new_customer_cnt,
                        })
                    })
                    .map_err(|e| {
                        anyhow!(
                            "reading the statistics of link {id} ({name:?}) of {} from {} to \
                             {} failed: {e}",
                            context.app,
                            window.from,
                            window.to
                        )
                    });
                let failed = piece.is_err();
                if !rows.send(piece).await || failed {
                    return;
                }
            }
        })
    }
}
