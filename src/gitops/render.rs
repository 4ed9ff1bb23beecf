//! The text of `plan` and `apply`, shaped like `terraform plan`: one block per link
//! (`+` create, `~` update, `!` error, blank for no change), then a summary line.

use std::fmt::Write as _;

use super::changes::{Applied, LinkAction, LinkPlan, Plan};
use super::manifest::{ManifestError, Origin};
use crate::reconcile::plan::FieldChange;
use crate::wecom::types::{LinkRange, PriorityOption};

fn range_line(range: &LinkRange) -> String {
    format!(
        "user_list = {:?}, department_list = {:?}",
        range.user_list, range.department_list
    )
}

fn priority(option: &Option<PriorityOption>) -> String {
    match option {
        None => "(none)".into(),
        Some(p) => format!(
            "{{priority_type = {}, priority_userid_list = {:?}}}",
            p.priority_type, p.priority_userid_list
        ),
    }
}

/// Notes about documents `plan` does not manage.
pub fn skipped(skipped: &[(Origin, String)]) -> String {
    let mut out = String::new();
    for (origin, kind) in skipped {
        let _ = writeln!(
            out,
            "note: {origin}: kind {kind} is not read (only Secret, WeComApp, AcquisitionLink are); skipped"
        );
    }
    out
}

/// The problems found in the files.
pub fn invalid(errors: &[ManifestError]) -> String {
    let mut out = String::new();
    for error in errors {
        let _ = writeln!(out, "error: {error}");
    }
    let _ = writeln!(
        out,
        "\nError: {} problem{} in the files; nothing was sent to WeCom. Fix them and run again.",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
    out
}

fn block(out: &mut String, link: &LinkPlan) {
    match &link.action {
        LinkAction::Create { request } => {
            let _ = writeln!(out, "  + {} will be created  ({})", link.key, link.origin);
            let _ = writeln!(out, "      create_link (A3) body:");
            let _ = writeln!(
                out,
                "        link_name             = {:?}",
                request.link_name
            );
            let _ = writeln!(
                out,
                "        range.user_list       = {:?}",
                request.range.user_list
            );
            let _ = writeln!(
                out,
                "        range.department_list = {:?}",
                request.range.department_list
            );
            if let Some(skip) = request.skip_verify {
                let _ = writeln!(out, "        skip_verify           = {skip}");
            }
            if request.priority_option.is_some() {
                let _ = writeln!(
                    out,
                    "        priority_option       = {}",
                    priority(&request.priority_option)
                );
            }
            if let Some(mark) = request.mark_source {
                let _ = writeln!(out, "        mark_source           = {mark}");
            }
            if !link.channels.is_empty() {
                let _ = writeln!(
                    out,
                    "      channel URLs for {:?} (known after apply)",
                    link.channels
                );
            }
        }
        LinkAction::Update {
            remote, changes, ..
        } => {
            let _ = writeln!(
                out,
                "  ~ {} will be updated in place  ({})",
                link.key, link.origin
            );
            let _ = writeln!(
                out,
                "      link {}: update_link (A4) sends the whole link, the range in full",
                remote.link_id
            );
            for change in changes {
                match change {
                    FieldChange::Range { from, to } => {
                        let _ = writeln!(out, "        ~ range (replaced whole)");
                        let _ = writeln!(out, "            - {}", range_line(from));
                        let _ = writeln!(out, "            + {}", range_line(to));
                    }
                    FieldChange::LinkName { from, to } => {
                        let _ = writeln!(out, "        ~ link_name       = {from:?} -> {to:?}");
                    }
                    FieldChange::SkipVerify { from, to } => {
                        let _ = writeln!(out, "        ~ skip_verify     = {from} -> {to}");
                    }
                    FieldChange::PriorityOption { from, to } => {
                        let _ = writeln!(
                            out,
                            "        ~ priority_option = {} -> {}",
                            priority(from),
                            priority(to)
                        );
                    }
                    FieldChange::MarkSource { from, to } => {
                        let _ = writeln!(out, "        ~ mark_source     = {from} -> {to}");
                    }
                }
            }
        }
        LinkAction::NoChange { remote } => {
            let _ = writeln!(out, "    {}: no change (link {})", link.key, remote.link_id);
        }
        LinkAction::Observe { remote, changes } => {
            let _ = writeln!(
                out,
                "  = {}: observed, never written (link {}, managementPolicy: Observe)",
                link.key, remote.link_id
            );
            for change in changes {
                let _ = writeln!(out, "      drift, not corrected: {change}");
            }
        }
        LinkAction::Error { message } => {
            let _ = writeln!(out, "  ! {}  ({})", link.key, link.origin);
            let _ = writeln!(out, "      error: {message}");
        }
    }
    if !matches!(link.action, LinkAction::NoChange { .. }) {
        let _ = writeln!(out);
    }
}

/// The plan, with the summary line last.
pub fn plan(plan: &Plan) -> String {
    let mut out = String::new();
    for app in &plan.apps {
        let _ = writeln!(out, "{} at {}", app.key, app.base_url);
        if !app.unmanaged.is_empty() {
            let listed: Vec<String> = app
                .unmanaged
                .iter()
                .map(|r| format!("{} {:?}", r.link_id, r.link_name))
                .collect();
            let _ = writeln!(
                out,
                "  {} other link{} in WeCom, not in the files, left alone: {}",
                listed.len(),
                if listed.len() == 1 { "" } else { "s" },
                listed.join(", ")
            );
        }
    }
    let _ = writeln!(out);
    for link in &plan.links {
        block(&mut out, link);
    }
    if !out.ends_with("\n\n") {
        out.push('\n');
    }
    let counts = plan.counts();
    if counts.errors == 0 && counts.create == 0 && counts.update == 0 {
        let _ = writeln!(out, "No changes: WeCom matches the files.\n");
    }
    let observed = if counts.observed > 0 {
        format!(", {} observed (never written)", counts.observed)
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "Plan: {} to create, {} to update, {} unchanged{observed}.",
        counts.create, counts.update, counts.unchanged
    );
    if counts.errors > 0 {
        let _ = writeln!(
            out,
            "Error: {} link{} could not be planned (marked !); apply changes nothing until they are fixed.",
            counts.errors,
            if counts.errors == 1 { "" } else { "s" }
        );
    }
    out
}

/// What `apply` did, with the summary line last.
pub fn applied(results: &[Applied]) -> String {
    let mut out = String::new();
    let (mut created, mut updated, mut unchanged, mut failed) = (0, 0, 0, 0);
    for result in results {
        match &result.outcome {
            Ok(link) => {
                match link.verb {
                    "created" => created += 1,
                    "updated" => updated += 1,
                    _ => unchanged += 1,
                }
                let _ = writeln!(out, "{}: {} link {}", result.key, link.verb, link.link_id);
                let _ = writeln!(out, "    url: {}", link.url);
                for channel in &link.channel_urls {
                    let _ = writeln!(out, "    channel {}: {}", channel.channel, channel.url);
                    let _ = writeln!(out, "      scheme: {}", channel.scheme_url);
                }
            }
            Err(message) => {
                failed += 1;
                let _ = writeln!(out, "{}: error: {message}", result.key);
            }
        }
    }
    let _ = writeln!(
        out,
        "\nApply {}: {created} created, {updated} updated, {unchanged} unchanged{}.",
        if failed == 0 {
            "complete"
        } else {
            "incomplete"
        },
        if failed == 0 {
            String::new()
        } else {
            format!(", {failed} failed")
        }
    );
    out
}
