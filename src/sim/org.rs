//! The simulated corp's org chart: departments (a tree under department 1) and their
//! members, and the expansion of a link's range into the people it covers (WeCom counts
//! sub-departments too, and a person reached twice counts once).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::wecom::types::LinkRange;

/// The root department every corp has.
pub const ROOT_DEPARTMENT: u64 = 1;

/// One department. `parent_id` is 0 for the root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Department {
    pub id: u64,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub parent_id: u64,
    /// Members directly in this department (not in its sub-departments).
    #[serde(default)]
    pub users: Vec<String>,
}

/// A valid org chart: a tree of departments rooted at department 1. Build one with
/// [`OrgChart::from_spec`] (checked) or take [`OrgChart::builtin`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgChart {
    departments: BTreeMap<u64, Department>,
    children: BTreeMap<u64, Vec<u64>>,
    users: BTreeSet<String>,
}

/// The body of `PUT /_sim/org`: `{"departments":[{"id":2,"parent_id":1,"users":["u1"]}],
/// "users":["extra"]}`. Top-level `users` are members of the root department; a department
/// without `parent_id` hangs under the root; department 1 exists even when not listed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrgSpec {
    #[serde(default)]
    pub departments: Vec<DepartmentSpec>,
    #[serde(default)]
    pub users: Vec<String>,
}

/// One department of an [`OrgSpec`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DepartmentSpec {
    pub id: u64,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub parent_id: Option<u64>,
    #[serde(default)]
    pub users: Vec<String>,
}

/// Why a range cannot be expanded: WeCom answers 60011 for both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeError {
    UnknownUser(String),
    UnknownDepartment(u64),
}

/// Longest userid WeCom accepts (the docs say 1..=64 bytes).
const MAX_USERID_BYTES: usize = 64;

impl OrgChart {
    /// The built-in corp (see the module documentation of [`crate::sim`]).
    pub fn builtin() -> OrgChart {
        let call_center: Vec<String> = (1..=480).map(|i| format!("u{i:04}")).collect();
        let spec = OrgSpec {
            departments: vec![
                DepartmentSpec {
                    id: ROOT_DEPARTMENT,
                    name: Some("Sim Corp".into()),
                    parent_id: None,
                    users: ["zhangsan", "lisi", "wangwu"].map(String::from).to_vec(),
                },
                DepartmentSpec {
                    id: 2,
                    name: Some("sales".into()),
                    parent_id: Some(ROOT_DEPARTMENT),
                    users: ["zhaoliu", "sunqi", "zhouba", "wujiu"]
                        .map(String::from)
                        .to_vec(),
                },
                DepartmentSpec {
                    id: 3,
                    name: Some("call-center".into()),
                    parent_id: Some(ROOT_DEPARTMENT),
                    users: call_center,
                },
                DepartmentSpec {
                    id: 4,
                    name: Some("sales-east".into()),
                    parent_id: Some(2),
                    users: ["zhengshi", "lisi"].map(String::from).to_vec(),
                },
            ],
            users: vec![],
        };
        // The built-in spec is a constant tree; from_spec cannot refuse it (unit-tested).
        OrgChart::from_spec(spec).unwrap_or_else(|_| OrgChart::empty())
    }

    fn empty() -> OrgChart {
        let root = Department {
            id: ROOT_DEPARTMENT,
            name: String::new(),
            parent_id: 0,
            users: vec![],
        };
        OrgChart {
            departments: BTreeMap::from([(ROOT_DEPARTMENT, root)]),
            children: BTreeMap::new(),
            users: BTreeSet::new(),
        }
    }

    /// Checks and builds an org chart. The error says which department or user is wrong.
    pub fn from_spec(spec: OrgSpec) -> Result<OrgChart, String> {
        let mut departments: BTreeMap<u64, Department> = BTreeMap::new();
        departments.insert(
            ROOT_DEPARTMENT,
            Department {
                id: ROOT_DEPARTMENT,
                name: String::new(),
                parent_id: 0,
                users: vec![],
            },
        );
        let mut seen = BTreeSet::new();
        for d in spec.departments {
            if d.id == 0 {
                return Err("department id 0 is not valid: ids start at 1 (the root)".into());
            }
            if !seen.insert(d.id) {
                return Err(format!("department {} is listed twice", d.id));
            }
            let parent_id = if d.id == ROOT_DEPARTMENT {
                match d.parent_id {
                    None | Some(0) => 0,
                    Some(p) => {
                        return Err(format!(
                            "department 1 is the root and cannot have parent {p}"
                        ));
                    }
                }
            } else {
                d.parent_id.unwrap_or(ROOT_DEPARTMENT)
            };
            if d.id != ROOT_DEPARTMENT && parent_id == 0 {
                return Err(format!(
                    "department {} has parent_id 0: only department 1 is a root",
                    d.id
                ));
            }
            departments.insert(
                d.id,
                Department {
                    id: d.id,
                    name: d.name.unwrap_or_default(),
                    parent_id,
                    users: d.users,
                },
            );
        }
        if let Some(root) = departments.get_mut(&ROOT_DEPARTMENT) {
            root.users.extend(spec.users);
        }
        let mut children: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for d in departments.values() {
            if d.id == ROOT_DEPARTMENT {
                continue;
            }
            if !departments.contains_key(&d.parent_id) {
                return Err(format!(
                    "department {} has parent {} which is not in the org chart",
                    d.id, d.parent_id
                ));
            }
            children.entry(d.parent_id).or_default().push(d.id);
        }
        // Every department must reach the root by its parents, or the tree has a cycle.
        for d in departments.values() {
            let mut at = d.id;
            let mut steps = 0usize;
            while at != ROOT_DEPARTMENT {
                steps += 1;
                if steps > departments.len() {
                    return Err(format!(
                        "department {} is in a parent cycle and does not reach department 1",
                        d.id
                    ));
                }
                at = departments.get(&at).map(|x| x.parent_id).unwrap_or(0);
                if at == 0 {
                    return Err(format!("department {} does not reach department 1", d.id));
                }
            }
        }
        let mut users = BTreeSet::new();
        for d in departments.values_mut() {
            for u in &d.users {
                if u.is_empty() || u.len() > MAX_USERID_BYTES {
                    return Err(format!(
                        "department {} has a userid of {} bytes: userids are 1..=64 bytes",
                        d.id,
                        u.len()
                    ));
                }
                users.insert(u.clone());
            }
            let mut unique = BTreeSet::new();
            d.users.retain(|u| unique.insert(u.clone()));
        }
        Ok(OrgChart {
            departments,
            children,
            users,
        })
    }

    pub fn has_user(&self, userid: &str) -> bool {
        self.users.contains(userid)
    }

    pub fn has_department(&self, id: u64) -> bool {
        self.departments.contains_key(&id)
    }

    pub fn departments(&self) -> impl Iterator<Item = &Department> {
        self.departments.values()
    }

    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// Everyone in `department` and its sub-departments, in a stable order.
    pub fn department_members(&self, department: u64) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut stack = vec![department];
        while let Some(id) = stack.pop() {
            if let Some(d) = self.departments.get(&id) {
                out.extend(d.users.iter().cloned());
            }
            if let Some(kids) = self.children.get(&id) {
                stack.extend(kids.iter().copied());
            }
        }
        out
    }

    /// The people a range covers: its users plus everyone in its departments and their
    /// sub-departments, each once, users first in the order given. Unknown ids are errors.
    pub fn expand(&self, range: &LinkRange) -> Result<Vec<String>, RangeError> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for u in &range.user_list {
            if !self.users.contains(u) {
                return Err(RangeError::UnknownUser(u.clone()));
            }
            if seen.insert(u.clone()) {
                out.push(u.clone());
            }
        }
        for &d in &range.department_list {
            if !self.departments.contains_key(&d) {
                return Err(RangeError::UnknownDepartment(d));
            }
            for u in self.department_members(d) {
                if seen.insert(u.clone()) {
                    out.push(u);
                }
            }
        }
        Ok(out)
    }

    /// The people of a stored range who are still in the chart (the org may have changed
    /// since the link was made): who receives its customers.
    pub fn current_members(&self, range: &LinkRange) -> Vec<String> {
        let known = LinkRange {
            user_list: range
                .user_list
                .iter()
                .filter(|u| self.has_user(u))
                .cloned()
                .collect(),
            department_list: range
                .department_list
                .iter()
                .copied()
                .filter(|d| self.has_department(*d))
                .collect(),
        };
        self.expand(&known).unwrap_or_default()
    }

    /// The chart as a [`OrgSpec`]-shaped dump for `/_sim/state`.
    pub fn to_spec(&self) -> OrgSpec {
        OrgSpec {
            departments: self
                .departments
                .values()
                .map(|d| DepartmentSpec {
                    id: d.id,
                    name: Some(d.name.clone()),
                    parent_id: Some(d.parent_id),
                    users: d.users.clone(),
                })
                .collect(),
            users: vec![],
        }
    }
}

impl Default for OrgChart {
    fn default() -> Self {
        OrgChart::builtin()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(users: &[&str], deps: &[u64]) -> LinkRange {
        LinkRange {
            user_list: users.iter().map(|s| s.to_string()).collect(),
            department_list: deps.to_vec(),
        }
    }

    #[test]
    fn builtin_chart_is_valid_and_has_the_documented_people() {
        let spec_built = OrgChart::from_spec(OrgChart::builtin().to_spec()).unwrap();
        assert_eq!(spec_built, OrgChart::builtin());
        let org = OrgChart::builtin();
        for u in ["zhangsan", "lisi", "wangwu", "u0001", "u0480"] {
            assert!(org.has_user(u), "{u}");
        }
        assert_eq!(org.department_members(3).len(), 480);
        // The whole corp fits one link (examples/ use department 1).
        assert_eq!(org.department_members(1).len(), 488);
    }

    #[test]
    fn expansion_includes_sub_departments_and_dedupes() {
        let org = OrgChart::builtin();
        // sales (2) has 4 users, sales-east (4) under it adds zhengshi and lisi.
        let people = org.expand(&range(&["lisi"], &[2])).unwrap();
        assert_eq!(people.len(), 6, "{people:?}");
        assert_eq!(people[0], "lisi");
        assert!(people.contains(&"zhengshi".to_string()));
    }

    #[test]
    fn root_department_covers_everyone() {
        let org = OrgChart::builtin();
        assert_eq!(
            org.expand(&range(&[], &[1])).unwrap().len(),
            org.user_count()
        );
    }

    #[test]
    fn unknown_ids_are_reported() {
        let org = OrgChart::builtin();
        assert_eq!(
            org.expand(&range(&["nobody"], &[])),
            Err(RangeError::UnknownUser("nobody".into()))
        );
        assert_eq!(
            org.expand(&range(&[], &[99])),
            Err(RangeError::UnknownDepartment(99))
        );
    }

    #[test]
    fn spec_puts_loose_users_in_root_and_orphans_under_root() {
        let org = OrgChart::from_spec(OrgSpec {
            departments: vec![DepartmentSpec {
                id: 2,
                users: vec!["u1".into(), "u2".into()],
                ..Default::default()
            }],
            users: vec!["extra".into()],
        })
        .unwrap();
        assert!(org.has_user("extra"));
        assert_eq!(org.department_members(1).len(), 3);
    }

    #[test]
    fn spec_errors_name_the_department() {
        let dup = OrgSpec {
            departments: vec![
                DepartmentSpec {
                    id: 2,
                    ..Default::default()
                },
                DepartmentSpec {
                    id: 2,
                    ..Default::default()
                },
            ],
            users: vec![],
        };
        assert!(
            OrgChart::from_spec(dup)
                .unwrap_err()
                .contains("department 2")
        );
        let missing_parent = OrgSpec {
            departments: vec![DepartmentSpec {
                id: 5,
                parent_id: Some(9),
                ..Default::default()
            }],
            users: vec![],
        };
        assert!(
            OrgChart::from_spec(missing_parent)
                .unwrap_err()
                .contains("parent 9")
        );
        let cycle = OrgSpec {
            departments: vec![
                DepartmentSpec {
                    id: 5,
                    parent_id: Some(6),
                    ..Default::default()
                },
                DepartmentSpec {
                    id: 6,
                    parent_id: Some(5),
                    ..Default::default()
                },
            ],
            users: vec![],
        };
        assert!(OrgChart::from_spec(cycle).unwrap_err().contains("cycle"));
    }
}
