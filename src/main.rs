//! `wecom-acq`: the controller, its WeCom simulator, and tools around them.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};

/// See Cargo.toml: fewer bytes per small allocation and freed memory given back, for the
/// peak RSS of a controller caching 10,000 links.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use wecom_acq::telemetry::{self, LogFormat};

#[derive(Parser, Debug)]
#[command(
    name = "wecom-acq",
    version,
    about = "Declarative WeCom customer-acquisition links for Kubernetes",
    // A flag given twice takes the last value (scripts and charts append overrides).
    args_override_self = true
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log level or filter (RUST_LOG wins when set).
    #[arg(long, global = true, env = "LOG_LEVEL", default_value = wecom_acq::defaults::LOG_LEVEL)]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the controller: watch WeComApps and AcquisitionLinks and keep WeCom in line.
    Run(wecom_acq::controller::RunArgs),
    /// Print the CustomResourceDefinitions (YAML, both kinds) to stdout, or write one file
    /// per kind with --output-dir.
    Crd {
        /// Write `<plural>.<group>.yaml` per kind into this directory instead of printing.
        #[arg(long, value_name = "DIR")]
        output_dir: Option<std::path::PathBuf>,
        /// Print the CRDs without their CEL rules, for API servers before v1.25 (where
        /// kubectl and Helm refuse the unknown `x-kubernetes-validations` field); the
        /// controller still checks the same rules and reports violations in status.
        #[arg(long, conflicts_with = "output_dir")]
        without_cel: bool,
    },
    /// Debug a callback URL: verify and decrypt what WeCom sent (WXBizMsgCrypt).
    #[command(subcommand)]
    Callback(wecom_acq::wecom::crypto_cli::CallbackCommand),
    /// Run the WeCom simulator (gettoken, A1-A8, callbacks, admin API under /_sim/).
    Simulate(Box<wecom_acq::sim::cli::SimulateArgs>),
    /// Show what WeCom calls the YAML files need (exit 0 no changes, 2 changes, 1 error).
    Plan(wecom_acq::gitops::FilesArgs),
    /// Make the changes `plan` shows, once, and print the links' ids and URLs.
    Apply(wecom_acq::gitops::FilesArgs),
    /// Write AcquisitionLink YAML for the WeCom links the files do not manage yet
    /// (Observe and Orphan unless --manage). Custom-developed and third-party apps only
    /// see the links they created.
    ///
    /// Reads the Secret and WeComApp documents of -f and lists every link of each app
    /// (A1 + A2; nothing is written to WeCom). AcquisitionLinks among the files mark their
    /// links as managed (spec.linkId, the link-id annotation, or the same linkName as plan
    /// matches). The objects observe (managementPolicy Observe) and orphan (deletionPolicy
    /// Orphan) unless --manage is given; `plan` over the result shows no change.
    ///
    /// WeCom shows custom-developed (代开发) and third-party apps only the links they
    /// created themselves: links made in the admin console or by another app cannot be
    /// imported with such an app's credentials (a self-built app sees them all).
    Import(wecom_acq::gitops::import::ImportArgs),
    /// Export what the links bring in: `export customers` (one row per customer, A6) or
    /// `export statistics` (clicks and new customers per link and window of at most 30
    /// days, A7), as CSV or JSON lines, for every link the app lists or those of --link.
    ///
    /// Streams: rows are written as WeCom's pages arrive, so memory stays bounded however
    /// many customers there are. Several links are read at once, never faster than the
    /// app's requestsPerMinute; a frequency limit (45009) is waited out and the same page
    /// read again. A progress bar shows on stderr when it is a terminal.
    Export(wecom_acq::export::ExportArgs),
    /// Try it in seconds with nothing installed: simulator, Kubernetes API emulator and
    /// the controller in one process, the examples applied, traffic simulated.
    Demo(wecom_acq::demo::DemoArgs),
    /// A link's URL as a QR code (PNG, SVG or terminal): `qr URL`, or `qr -n NS NAME
    /// [--channel C]` for an AcquisitionLink in the cluster.
    Qr(wecom_acq::qr::QrArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format, &cli.log_level);
    match cli.command {
        Command::Run(args) => run_async(wecom_acq::controller::run(args)),
        Command::Crd {
            output_dir,
            without_cel,
        } => {
            let written = match output_dir {
                None if without_cel => {
                    wecom_acq::api::crd_yaml_without_cel().map(|yaml| print!("{yaml}"))
                }
                None => wecom_acq::api::crd_yaml().map(|yaml| print!("{yaml}")),
                Some(dir) => wecom_acq::api::write_crd_files(&dir).map(|paths| {
                    for path in paths {
                        println!("wrote {}", path.display());
                    }
                }),
            };
            match written {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("error: {err}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Callback(command) => wecom_acq::wecom::crypto_cli::run(command),
        Command::Simulate(args) => run_async(wecom_acq::sim::cli::run(*args)),
        Command::Plan(args) => wecom_acq::gitops::plan_command(args),
        Command::Apply(args) => wecom_acq::gitops::apply_command(args),
        Command::Import(args) => wecom_acq::gitops::import::import_command(args),
        Command::Export(args) => run_async(wecom_acq::export::run(args)),
        Command::Demo(args) => run_async(wecom_acq::demo::run(args)),
        Command::Qr(args) => run_async(wecom_acq::qr::run(args)),
    }
}

/// Runs an async subcommand on a fresh runtime; an error is printed on one line.
fn run_async(job: impl std::future::Future<Output = anyhow::Result<()>>) -> std::process::ExitCode {
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(job));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
