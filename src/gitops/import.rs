//! `wecom-acq import`: onboarding. Writes one AcquisitionLink per WeCom link that no
//! document of the files manages yet, with the link's settings as WeCom has them, so that
//! `plan` over the result shows no change and applying it adopts the links without a WeCom
//! write.
//!
//! The written objects observe (`managementPolicy: Observe`) and orphan (`deletionPolicy:
//! Orphan`) by default: importing must never be the step that changes or deletes a link
//! people already share. Names are derived from the link name and id alone, so a re-run
//! writes the same names whatever else WeCom lists.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use kube::ResourceExt;
use sha1::{Digest, Sha1};

use super::changes::{self, Connection};
use super::manifest::{Loaded, Manifests, ObjectKey};
use super::{EXIT_ERROR, FilesArgs, print_err, print_out, read_files, runtime};
use crate::api::{
    AcquisitionLink, AcquisitionLinkSpec, AppRef, DeletionPolicy, LINK_ID_ANNOTATION,
    LinkRangeSpec, ManagementPolicy, PriorityOptionSpec, RemoteDeletePolicy,
};
use crate::reconcile::plan;
use crate::wecom::types::RemoteLink;

/// Longest Kubernetes object name written (a DNS-1123 label).
pub const MAX_NAME_LEN: usize = 63;
/// Hex digits of the link id's hash in a name: 40 bits keep a collision among thousands of
/// links below one in a million (and one is refused, never written).
const HASH_HEX_DIGITS: usize = 10;

/// Flags of `import`.
#[derive(clap::Args, Debug, Clone)]
pub struct ImportArgs {
    #[command(flatten)]
    pub files: FilesArgs,
    /// Write one <name>.yaml per object into this directory (created when missing) instead
    /// of a multi-document YAML stream on stdout. An existing file with other content is
    /// never overwritten.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Write `managementPolicy: Manage` (the controller then corrects drift) instead of
    /// Observe. deletionPolicy stays Orphan either way.
    #[arg(long)]
    pub manage: bool,
}

/// One object to write.
#[derive(Debug, Clone)]
pub struct Imported {
    pub link: AcquisitionLink,
    /// The WeCom link's URL, for the comment above the object.
    pub url: String,
}

/// A WeCom link that is not written, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotImported {
    pub app: ObjectKey,
    pub link_id: String,
    pub reason: String,
}

/// The object name of a link: a slug of its name (ASCII letters and digits, other runs
/// as one '-') and a hash of its id, at most 63 characters. The hash is always there, so
/// the name never depends on which other links exist; a name without ASCII letters or
/// digits (e.g. Chinese) gives `link-<hash>`.
pub fn object_name(link_name: &str, link_id: &str) -> String {
    let max_slug = MAX_NAME_LEN - 1 - HASH_HEX_DIGITS;
    let mut slug = String::new();
    for c in link_name.chars() {
        if slug.len() >= max_slug {
            break;
        }
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug = slug.trim_end_matches('-');
    let slug = if slug.is_empty() { "link" } else { slug };
    let digest = hex::encode(Sha1::digest(link_id.as_bytes()));
    format!("{slug}-{}", &digest[..HASH_HEX_DIGITS])
}

/// The spec that makes `plan` see no difference from `remote`: name, range, skipVerify and
/// priorityOption as WeCom reports them, markSource left unmanaged.
pub fn imported_spec(app: &str, remote: &RemoteLink, manage: bool) -> AcquisitionLinkSpec {
    AcquisitionLinkSpec {
        app_ref: AppRef { name: app.into() },
        link_name: remote.link_name.clone(),
        range: LinkRangeSpec {
            user_list: remote.range.user_list.clone(),
            department_list: remote.range.department_list.clone(),
        },
        skip_verify: remote.skip_verify,
        priority_option: remote.priority_option.as_ref().map(|p| PriorityOptionSpec {
            priority_type: p.priority_type,
            priority_user_list: p.priority_userid_list.clone(),
        }),
        mark_source: None,
        channels: vec![],
        deletion_policy: DeletionPolicy::Orphan,
        // An adopted link is never recreated; saying so keeps the object honest.
        on_remote_delete: RemoteDeletePolicy::Orphan,
        link_id: Some(remote.link_id.clone()),
        management_policy: if manage {
            ManagementPolicy::Manage
        } else {
            ManagementPolicy::Observe
        },
    }
}

/// The link ids of one app that documents of the files already stand for: their
/// `spec.linkId` or link-id annotation, and for a document without `spec.linkId` every link
/// `plan` could match by name (the same `linkName`, not named by another document's id).
pub fn managed_ids(
    app: &ObjectKey,
    documents: &[Loaded<AcquisitionLink>],
    remotes: &[RemoteLink],
) -> BTreeSet<String> {
    let of_app: Vec<&AcquisitionLink> = documents
        .iter()
        .map(|d| &d.object)
        .filter(|l| {
            l.namespace().as_deref() == Some(app.namespace.as_str())
                && l.spec.app_ref.name == app.name
        })
        .collect();
    let by_spec: BTreeSet<&str> = of_app
        .iter()
        .filter_map(|l| l.spec.link_id.as_deref())
        .collect();
    let mut managed: BTreeSet<String> = by_spec.iter().map(|id| id.to_string()).collect();
    for link in &of_app {
        if let Some(id) = link.annotations().get(LINK_ID_ANNOTATION) {
            managed.insert(id.clone());
        }
        if link.spec.link_id.is_none() {
            managed.extend(
                remotes
                    .iter()
                    .filter(|r| {
                        r.link_name == link.spec.link_name && !by_spec.contains(r.link_id.as_str())
                    })
                    .map(|r| r.link_id.clone()),
            );
        }
    }
    managed
}

/// The objects for the unmanaged links of one app, and the links that cannot be written
/// (a spec the CRD would refuse, or a name another document already has).
pub fn import_app(
    app: &ObjectKey,
    remotes: &[RemoteLink],
    documents: &[Loaded<AcquisitionLink>],
    manage: bool,
) -> (Vec<Imported>, Vec<NotImported>) {
    let managed = managed_ids(app, documents, remotes);
    let taken: BTreeMap<&str, &Loaded<AcquisitionLink>> = documents
        .iter()
        .filter(|d| d.key.namespace == app.namespace)
        .map(|d| (d.key.name.as_str(), d))
        .collect();
    let mut imported = Vec::new();
    let mut refused = Vec::new();
    for remote in remotes.iter().filter(|r| !managed.contains(&r.link_id)) {
        let not_imported = |reason: String| NotImported {
            app: app.clone(),
            link_id: remote.link_id.clone(),
            reason,
        };
        let spec = imported_spec(&app.name, remote, manage);
        if let Err(message) = plan::validate(&spec) {
            refused.push(not_imported(format!(
                "WeCom's settings of {:?} do not make a valid AcquisitionLink ({message}); \
                 write its YAML by hand",
                remote.link_name
            )));
            continue;
        }
        let name = object_name(&remote.link_name, &remote.link_id);
        if let Some(other) = taken.get(name.as_str()) {
            refused.push(not_imported(format!(
                "its name {name} is already used by {} ({}), which names another link; \
                 rename that document",
                other.key, other.origin
            )));
            continue;
        }
        let mut link = AcquisitionLink::new(&name, spec);
        link.metadata.namespace = Some(app.namespace.clone());
        imported.push(Imported {
            link,
            url: remote.url.clone(),
        });
    }
    (imported, refused)
}

/// One object as YAML, with a comment naming the WeCom link. `namespace` is left out when
/// it is `default_namespace`, so `kubectl apply -n` still chooses it as for the input files.
pub fn to_yaml(imported: &Imported, default_namespace: &str) -> Result<String, String> {
    let mut link = imported.link.clone();
    if link.metadata.namespace.as_deref() == Some(default_namespace) {
        link.metadata.namespace = None;
    }
    let yaml = crate::yaml::to_string(&link)
        .map_err(|e| format!("cannot write {} as YAML: {e}", link.name_any()))?;
    let id = link.spec.link_id.as_deref().unwrap_or_default();
    Ok(format!(
        "# WeCom link {id} ({}), imported by wecom-acq import\n{yaml}",
        imported.url
    ))
}

/// Names written twice (a hash collision of two link ids): refused, never overwritten.
fn duplicate_names(objects: &[Imported]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    objects
        .iter()
        .map(|o| o.link.name_any())
        .filter(|name| !seen.insert(name.clone()))
        .collect()
}

/// Writes `name.yaml` files into `dir`. Checks every file first: nothing is written while
/// any existing file would be replaced by other content.
fn write_dir(dir: &Path, documents: &[(String, String)]) -> Result<usize, String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create the directory {}: {e}", dir.display()))?;
    let mut clashes = Vec::new();
    for (name, text) in documents {
        let path = dir.join(format!("{name}.yaml"));
        match std::fs::read_to_string(&path) {
            Ok(existing) if existing != *text => clashes.push(path.display().to_string()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        }
    }
    if !clashes.is_empty() {
        return Err(format!(
            "{} already exist{} with other content and would be overwritten: pass the files \
             with -f (their links then count as managed), or move them away; nothing was written",
            clashes.join(", "),
            if clashes.len() == 1 { "s" } else { "" }
        ));
    }
    for (name, text) in documents {
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(documents.len())
}

/// Lists every app's links and decides what to write. Errors name the app; nothing is
/// written when any app cannot be read.
async fn import_all(
    manifests: &Manifests,
    connection: &Connection,
    manage: bool,
) -> Result<(Vec<Imported>, Vec<NotImported>, String), String> {
    if manifests.apps.is_empty() {
        return Err(
            "the files hold no WeComApp: add the app's YAML and its Secret with -f".to_string(),
        );
    }
    let mut imported = Vec::new();
    let mut refused = Vec::new();
    let mut summary = String::new();
    for app in manifests.apps.values() {
        let (client, base_url) = changes::client_for(manifests, app, connection)?;
        let remotes = changes::remote_links(&client, &app.key, &base_url).await?;
        let (mine, not_mine) = import_app(&app.key, &remotes, &manifests.links, manage);
        let _ = writeln!(
            summary,
            "{}: {} link{} in WeCom, {} to import, {} already managed by the files",
            app.key,
            remotes.len(),
            if remotes.len() == 1 { "" } else { "s" },
            mine.len(),
            remotes.len() - mine.len() - not_mine.len()
        );
        imported.extend(mine);
        refused.extend(not_mine);
    }
    Ok((imported, refused, summary))
}

/// `wecom-acq import`.
pub fn import_command(args: ImportArgs) -> ExitCode {
    let Some(manifests) = read_files(&args.files) else {
        return ExitCode::from(EXIT_ERROR);
    };
    let Some(rt) = runtime() else {
        return ExitCode::from(EXIT_ERROR);
    };
    let connection = Connection {
        api_base_url: args.files.api_base_url.clone(),
        ..Connection::default()
    };
    let (imported, refused, summary) =
        match rt.block_on(import_all(&manifests, &connection, args.manage)) {
            Ok(found) => found,
            Err(message) => {
                print_err(&format!("error: {message}\nNothing was written.\n"));
                return ExitCode::from(EXIT_ERROR);
            }
        };
    let duplicates = duplicate_names(&imported);
    if !duplicates.is_empty() {
        print_err(&format!(
            "error: two links give the same object name ({}); write one of them by hand. \
             Nothing was written.\n",
            duplicates.join(", ")
        ));
        return ExitCode::from(EXIT_ERROR);
    }
    let mut documents = Vec::new();
    for object in &imported {
        match to_yaml(object, &args.files.namespace) {
            Ok(text) => documents.push((object.link.name_any(), text)),
            Err(message) => {
                print_err(&format!("error: {message}\nNothing was written.\n"));
                return ExitCode::from(EXIT_ERROR);
            }
        }
    }
    match &args.out {
        Some(dir) => match write_dir(dir, &documents) {
            Ok(count) => print_err(&format!(
                "wrote {count} file{} into {}\n",
                if count == 1 { "" } else { "s" },
                dir.display()
            )),
            Err(message) => {
                print_err(&format!("error: {message}\n"));
                return ExitCode::from(EXIT_ERROR);
            }
        },
        None => {
            let texts: Vec<&str> = documents.iter().map(|(_, text)| text.as_str()).collect();
            print_out(&texts.join("---\n"));
        }
    }
    print_err(&summary);
    for link in &refused {
        print_err(&format!(
            "error: link {} of {} was not imported: {}\n",
            link.link_id, link.app, link.reason
        ));
    }
    if refused.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_ERROR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wecom::types::{LinkRange, PriorityOption};

    fn remote(id: &str, name: &str) -> RemoteLink {
        RemoteLink {
            link_id: id.into(),
            link_name: name.into(),
            url: format!("https://work.weixin.qq.com/ca/{id}"),
            create_time: 1,
            skip_verify: false,
            mark_source: true,
            range: LinkRange {
                user_list: vec!["zhangsan".into()],
                department_list: vec![],
            },
            priority_option: None,
        }
    }

    /// The check `plan` applies to a namespace (a DNS-1123 label).
    fn is_dns_label(name: &str) -> bool {
        super::super::manifest::check_name(name, MAX_NAME_LEN).is_ok()
    }

    #[test]
    fn names_are_dns_labels_from_the_name_and_a_hash_of_the_id() {
        let cases = [
            "Sales",
            "销售咨询",
            "  --Big SALE!! 2026--  ",
            "a",
            "",
            &"x".repeat(200),
            &"ab-".repeat(40),
            "Ünïcödé ⚡ mix 9",
        ];
        for name in cases {
            let object = object_name(name, "cawcdeA1");
            assert!(is_dns_label(&object), "{name:?} gave {object:?}");
        }
        assert!(object_name("Sales", "id1").starts_with("sales-"));
        assert!(object_name("销售咨询", "id1").starts_with("link-"));
        assert!(object_name("Big SALE!! 2026", "id1").starts_with("big-sale-2026-"));
        // Stable: the same link gives the same name; another id another name.
        assert_eq!(object_name("Sales", "id1"), object_name("Sales", "id1"));
        assert_ne!(object_name("Sales", "id1"), object_name("Sales", "id2"));
        // Ids differing only in case (WeCom ids are case-sensitive) stay apart.
        assert_ne!(object_name("Sales", "caWX"), object_name("Sales", "cawx"));
    }

    #[test]
    fn the_spec_copies_what_plan_compares() {
        let mut r = remote("cawc1", "Sales");
        r.range.department_list = vec![3, 2];
        r.priority_option = Some(PriorityOption {
            priority_type: 2,
            priority_userid_list: vec!["zhangsan".into()],
        });
        let spec = imported_spec("wecom", &r, false);
        assert_eq!(spec.management_policy, ManagementPolicy::Observe);
        assert_eq!(spec.deletion_policy, DeletionPolicy::Orphan);
        assert_eq!(spec.link_id.as_deref(), Some("cawc1"));
        let desired = plan::DesiredLink::from_spec(&spec);
        assert!(plan::diff(&desired, &r).is_empty());
        assert!(plan::validate(&spec).is_ok());
        let managed = imported_spec("wecom", &r, true);
        assert_eq!(managed.management_policy, ManagementPolicy::Manage);
        assert_eq!(managed.deletion_policy, DeletionPolicy::Orphan);
    }

    fn document(name: &str, spec: AcquisitionLinkSpec) -> Loaded<AcquisitionLink> {
        let mut link = AcquisitionLink::new(name, spec);
        link.metadata.namespace = Some("default".into());
        Loaded {
            origin: super::super::manifest::Origin {
                file: "links.yaml".into(),
                document: Some(1),
            },
            key: ObjectKey {
                kind: "AcquisitionLink".into(),
                namespace: "default".into(),
                name: name.into(),
            },
            object: link,
        }
    }

    fn app() -> ObjectKey {
        ObjectKey {
            kind: "WeComApp".into(),
            namespace: "default".into(),
            name: "wecom".into(),
        }
    }

    #[test]
    fn links_the_files_stand_for_are_not_imported() {
        let remotes = [
            remote("by-id", "A"),
            remote("by-name", "B"),
            remote("by-annotation", "C"),
            remote("free", "B"),
            remote("other-app", "D"),
        ];
        let mut by_id = imported_spec("wecom", &remotes[0], true);
        by_id.link_name = "renamed".into();
        let mut by_name = imported_spec("wecom", &remotes[1], true);
        by_name.link_id = None;
        let mut by_annotation = document("c", imported_spec("wecom", &remotes[2], true));
        by_annotation.object.spec.link_id = None;
        by_annotation.object.spec.link_name = "not C".into();
        by_annotation
            .object
            .annotations_mut()
            .insert(LINK_ID_ANNOTATION.into(), "by-annotation".into());
        let other_app = imported_spec("other", &remotes[4], true);
        let documents = vec![
            document("a", by_id),
            document("b", by_name),
            by_annotation,
            document("d", other_app),
        ];
        let managed = managed_ids(&app(), &documents, &remotes);
        // "free" has B's name too: plan would call the two links ambiguous, so neither is
        // imported behind the document's back.
        assert_eq!(
            managed,
            ["by-annotation", "by-id", "by-name", "free"]
                .map(String::from)
                .into()
        );
        let (imported, refused) = import_app(&app(), &remotes, &documents, false);
        assert!(refused.is_empty());
        let ids: Vec<_> = imported
            .iter()
            .map(|i| i.link.spec.link_id.clone().unwrap_or_default())
            .collect();
        assert_eq!(ids, vec!["other-app".to_string()]);
    }

    #[test]
    fn invalid_settings_and_taken_names_are_reported_not_written() {
        let mut empty = remote("empty", "x");
        empty.range = LinkRange::default();
        let clash = remote("clash", "Sales");
        let mut taken = imported_spec("wecom", &remote("elsewhere", "Other"), false);
        taken.link_id = Some("elsewhere".into());
        let documents = vec![document(&object_name("Sales", "clash"), taken)];
        let (imported, refused) = import_app(&app(), &[empty, clash], &documents, false);
        assert!(imported.is_empty());
        assert_eq!(refused.len(), 2);
        assert!(refused[0].reason.contains("spec.range"), "{refused:?}");
        assert!(refused[1].reason.contains("already used by"), "{refused:?}");
    }

    #[test]
    fn yaml_omits_the_default_namespace_and_names_the_link() {
        let (imported, _) = import_app(&app(), &[remote("cawc1", "Sales: \"q\"")], &[], false);
        let yaml = to_yaml(&imported[0], "default").unwrap();
        assert!(yaml.starts_with("# WeCom link cawc1 (https://work.weixin.qq.com/ca/cawc1)"));
        assert!(!yaml.contains("namespace"), "{yaml}");
        assert!(!yaml.contains("status"), "{yaml}");
        let back: AcquisitionLink = crate::yaml::from_str(&yaml).unwrap();
        assert_eq!(back.spec, imported[0].link.spec);
        let other = to_yaml(&imported[0], "team-a").unwrap();
        assert!(other.contains("namespace: default"), "{other}");
    }
}
