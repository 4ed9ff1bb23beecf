//! A WeComApp in use outlives its links (Crossplane's ProviderConfigUsage idea): the app
//! carries [`APP_IN_USE_FINALIZER`], removed only once no AcquisitionLink of its namespace
//! names it, those being deleted included. Without it, deleting a namespace could remove
//! the app (and the client the links' cleanup needs) before the links' own finalizers ran,
//! leaking every `deletionPolicy: Delete` link in WeCom.

use kube::ResourceExt;
use kube::runtime::reflector::Store;

use crate::api::{AcquisitionLink, WeComApp};

/// The names of the links in `app`'s namespace that refer to it, sorted.
pub fn links_using(links: &Store<AcquisitionLink>, app: &WeComApp) -> Vec<String> {
    let namespace = app.namespace();
    let name = app.name_any();
    let mut users: Vec<String> = links
        .state()
        .iter()
        .filter(|l| l.namespace() == namespace && l.spec.app_ref.name == name)
        .map(|l| l.name_any())
        .collect();
    users.sort();
    users
}

/// The stable message for an app whose deletion waits for its links: at most a few names,
/// then a count, so a namespace with thousands of links writes a short line.
pub fn waiting_message(users: &[String]) -> String {
    const SHOWN: usize = 5;
    let shown = users
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    let more = users.len().saturating_sub(SHOWN);
    let tail = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!(
        "deletion waits for {} AcquisitionLink(s) using this app ({shown}{tail}); they are \
         deleted (or left, per their deletionPolicy) in WeCom first",
        users.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::{reflector, watcher};
    use serde_json::json;

    fn link(namespace: &str, name: &str, app: &str) -> AcquisitionLink {
        serde_json::from_value(json!({
            "apiVersion": "acquisition.wecom.dev/v1alpha1",
            "kind": "AcquisitionLink",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"appRef": {"name": app}, "linkName": "x", "range": {"userList": ["a"]}},
        }))
        .expect("a valid AcquisitionLink")
    }

    fn app(namespace: &str, name: &str) -> WeComApp {
        serde_json::from_value(json!({
            "apiVersion": "acquisition.wecom.dev/v1alpha1",
            "kind": "WeComApp",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"corpId": "ww1", "secretRef": {"name": "s", "key": "secret"}},
        }))
        .expect("a valid WeComApp")
    }

    #[test]
    fn only_links_of_the_same_namespace_and_app_count() {
        let (store, mut writer) = reflector::store::<AcquisitionLink>();
        for l in [
            link("ns", "b", "wecom"),
            link("ns", "a", "wecom"),
            link("ns", "c", "other"),
            link("elsewhere", "d", "wecom"),
        ] {
            writer.apply_watcher_event(&watcher::Event::Apply(l));
        }
        assert_eq!(links_using(&store, &app("ns", "wecom")), vec!["a", "b"]);
        assert!(links_using(&store, &app("ns", "unused")).is_empty());
    }

    #[test]
    fn waiting_message_is_short_and_stable() {
        let users: Vec<String> = (0..1000).map(|i| format!("link-{i:04}")).collect();
        let message = waiting_message(&users);
        assert!(message.starts_with("deletion waits for 1000 AcquisitionLink(s)"));
        assert!(
            message.contains("link-0000, link-0001, link-0002, link-0003, link-0004 and 995 more")
        );
        assert_eq!(message, waiting_message(&users));
        assert!(waiting_message(&users[..1]).contains("(link-0000)"));
    }
}
