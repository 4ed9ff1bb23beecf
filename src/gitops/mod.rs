//! `wecom-acq plan` and `wecom-acq apply`: GitOps for acquisition links without a cluster
//! (and `import`, which writes the YAML of links made elsewhere).
//! They read Secret, WeComApp and AcquisitionLink YAML from files, check it as the
//! apiserver would, and show (`plan`) or make once (`apply`) the WeCom calls the
//! controller would make. Exit codes of `plan` gate CI jobs: 0 no changes, 2 changes
//! pending, 1 error.
//!
//! Nothing is sent to WeCom while any document is invalid, and `apply` changes nothing
//! while any link cannot be planned. Secrets are read from the files and never printed.

pub mod changes;
pub mod import;
pub mod manifest;
pub mod render;
pub mod schema;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use changes::Connection;

/// `plan`: no change.
pub const EXIT_NO_CHANGES: u8 = 0;
/// `plan`/`apply`: invalid input, a link that cannot be planned, or a failed call.
pub const EXIT_ERROR: u8 = 1;
/// `plan`: changes pending.
pub const EXIT_CHANGES: u8 = 2;

/// Flags shared by `plan` and `apply`.
#[derive(clap::Args, Debug, Clone)]
pub struct FilesArgs {
    /// YAML files, or directories read recursively for *.yaml and *.yml (sorted).
    /// Repeatable; `-f examples/*.yaml` works too.
    #[arg(short = 'f', long = "filename", value_name = "DIR|FILE", required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// Send every app's calls to this WeCom API base URL instead of its spec.apiBaseUrl
    /// (e.g. the simulator's http://127.0.0.1:8900).
    #[arg(long, value_name = "URL")]
    pub api_base_url: Option<String>,
    /// Namespace of documents that name none.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
}

fn print_out(text: &str) {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn print_err(text: &str) {
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Runtime::new() {
        Ok(rt) => Some(rt),
        Err(e) => {
            print_err(&format!("error: cannot start the async runtime: {e}\n"));
            None
        }
    }
}

/// Reads and checks the files. `None` after printing the problems of invalid input.
pub(crate) fn read_files(args: &FilesArgs) -> Option<manifest::Manifests> {
    match manifest::load(&args.files, &args.namespace) {
        Ok(manifests) => {
            print_err(&render::skipped(&manifests.skipped));
            Some(manifests)
        }
        Err(errors) => {
            print_err(&render::invalid(&errors));
            None
        }
    }
}

/// Reads and checks the files, then plans against WeCom. `None` after printing the
/// problems of invalid input.
async fn read_and_plan(args: &FilesArgs) -> Option<changes::Plan> {
    let manifests = read_files(args)?;
    if manifests.links.is_empty() {
        print_err("note: the files hold no AcquisitionLink; there is nothing to plan\n");
    }
    let connection = Connection {
        api_base_url: args.api_base_url.clone(),
        ..Connection::default()
    };
    Some(changes::plan(&manifests, &connection).await)
}

/// `wecom-acq plan`.
pub fn plan_command(args: FilesArgs) -> ExitCode {
    let Some(rt) = runtime() else {
        return ExitCode::from(EXIT_ERROR);
    };
    let Some(plan) = rt.block_on(read_and_plan(&args)) else {
        return ExitCode::from(EXIT_ERROR);
    };
    print_out(&render::plan(&plan));
    let counts = plan.counts();
    ExitCode::from(if counts.errors > 0 {
        EXIT_ERROR
    } else if counts.create + counts.update > 0 {
        EXIT_CHANGES
    } else {
        EXIT_NO_CHANGES
    })
}

/// `wecom-acq apply`.
pub fn apply_command(args: FilesArgs) -> ExitCode {
    let Some(rt) = runtime() else {
        return ExitCode::from(EXIT_ERROR);
    };
    rt.block_on(async {
        let Some(plan) = read_and_plan(&args).await else {
            return ExitCode::from(EXIT_ERROR);
        };
        print_out(&render::plan(&plan));
        if plan.counts().errors > 0 {
            print_err("\nNothing was applied.\n");
            return ExitCode::from(EXIT_ERROR);
        }
        print_out("\n");
        let results = changes::apply(&plan).await;
        print_out(&render::applied(&results));
        if results.iter().all(|r| r.outcome.is_ok()) {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_ERROR)
        }
    })
}
