//! Loading a YAML config so that an operator sees every problem at once.
//!
//! YAML → JSON value → environment overrides (`PREFIX_PATH_TO_KEY=value`) → typed struct.
//! The typed struct has defaults everywhere (required keys are `Option`s the caller checks), so
//! a bad value can be reported and dropped, and parsing retried: every type error, every
//! unknown key (with a "did you mean"), not only the first.

use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Map, Value};

/// What [`load`] found.
#[derive(Debug)]
pub struct Loaded<T> {
    /// The value, with defaults where input was bad; `None` when nothing could be read.
    pub value: Option<T>,
    /// What makes the config invalid, one line each.
    pub problems: Vec<String>,
    /// What deserves a word but not a refusal: environment variables with the prefix that match
    /// no key. They are often not meant for us — Kubernetes injects `<SERVICE>_SERVICE_HOST`
    /// for every Service, so a Service named `smartscale-controller` yields
    /// `SMARTSCALE_CONTROLLER_SERVICE_HOST` — so they are named once and otherwise ignored.
    pub warnings: Vec<String>,
}

/// Parses `yaml` into `T`, applying overrides from `env` whose names start with `prefix`
/// (except those in `ignore`). `template` is `T` serialised with one element in every list:
/// it tells which keys exist, to resolve env names and suggest fixes for typos.
pub fn load<T: DeserializeOwned + Serialize>(
    source: &str,
    yaml: &str,
    env: &[(String, String)],
    prefix: &str,
    ignore: &[&str],
    template: &Value,
) -> Loaded<T> {
    let mut warnings = Vec::new();
    let (value, problems) = parse(source, yaml, env, prefix, ignore, template, &mut warnings);
    Loaded {
        value,
        problems,
        warnings,
    }
}

fn parse<T: DeserializeOwned + Serialize>(
    source: &str,
    yaml: &str,
    env: &[(String, String)],
    prefix: &str,
    ignore: &[&str],
    template: &Value,
    warnings: &mut Vec<String>,
) -> (Option<T>, Vec<String>) {
    let mut problems = Vec::new();
    let mut value = if yaml.trim().is_empty() {
        Value::Object(Map::new())
    } else {
        match serde_saphyr::from_str::<Value>(yaml) {
            Ok(Value::Null) => Value::Object(Map::new()),
            Ok(v @ Value::Object(_)) => v,
            Ok(other) => {
                problems.push(format!(
                    "{source}: the top level must be a mapping of keys, found {}",
                    kind(&other)
                ));
                return (None, problems);
            }
            Err(e) => {
                problems.push(format!("{source}: not valid YAML: {e}"));
                return (None, problems);
            }
        }
    };
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        if ignore.contains(&name.as_str()) {
            continue;
        }
        match resolve(template, &rest.to_ascii_lowercase()) {
            Some(path) => set(&mut value, &path, scalar(raw)),
            None => warnings.push(format!(
                "environment variable {name} matches no config key and is ignored (an override would look like {prefix}{})",
                first_leaf(template)
            )),
        }
    }

    for _attempt in 0..100 {
        let mut unknown = Vec::new();
        let mut note = |p: serde_ignored::Path| unknown.push(path_string(&p));
        let result: Result<T, _> =
            serde_path_to_error::deserialize(serde_ignored::Deserializer::new(&value, &mut note));
        match result {
            Ok(t) => {
                for path in unknown {
                    problems.push(unknown_key(&path, template));
                }
                return (Some(t), problems);
            }
            Err(e) => {
                let path = e.path().to_string();
                problems.push(format!("{path}: {}", e.inner()));
                let segments: Vec<Seg> = e
                    .path()
                    .iter()
                    .filter_map(|s| match s {
                        serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
                        serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
                        _ => None,
                    })
                    .collect();
                if segments.is_empty() || !remove(&mut value, &segments) {
                    return (None, problems);
                }
            }
        }
    }
    problems.push("too many problems; fix these first".to_string());
    (None, problems)
}

/// `a.b[1].c`, the same notation serde_path_to_error uses.
fn path_string(p: &serde_ignored::Path) -> String {
    use serde_ignored::Path as P;
    match p {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", path_string(parent)),
        P::Map { parent, key } => {
            let parent = path_string(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            path_string(parent)
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Turns an env value into YAML's idea of it (`5` → number, `true` → bool, else a string).
fn scalar(raw: &str) -> Value {
    match serde_saphyr::from_str::<Value>(raw) {
        Ok(v @ (Value::Bool(_) | Value::Number(_) | Value::Array(_) | Value::Object(_))) => v,
        _ => Value::String(raw.to_string()),
    }
}

/// Finds the config path an env name (lower-cased, without prefix) means, e.g.
/// `prometheus_url` → [prometheus, url], `node_groups_0_max` → [node_groups, 0, max].
fn resolve(template: &Value, rest: &str) -> Option<Vec<Seg>> {
    match template {
        Value::Object(map) => {
            // Longest key first, so `node_groups_…` is not read as `node` + `groups_…`.
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by_key(|k| std::cmp::Reverse(k.len()));
            for k in keys {
                if rest == k.as_str() {
                    return Some(vec![Seg::Key(k.clone())]);
                }
                if let Some(tail) = rest
                    .strip_prefix(k.as_str())
                    .and_then(|t| t.strip_prefix('_'))
                    && let Some(mut path) = resolve(&map[k], tail)
                {
                    path.insert(0, Seg::Key(k.clone()));
                    return Some(path);
                }
            }
            None
        }
        Value::Array(items) => {
            let (index, tail) = rest.split_once('_').unwrap_or((rest, ""));
            let index: usize = index.parse().ok()?;
            let elem = items.first()?;
            if tail.is_empty() {
                return Some(vec![Seg::Index(index)]);
            }
            let mut path = resolve(elem, tail)?;
            path.insert(0, Seg::Index(index));
            Some(path)
        }
        _ => None,
    }
}

fn first_leaf(template: &Value) -> String {
    match template {
        Value::Object(m) => m
            .iter()
            .find(|(_, v)| !v.is_object() && !v.is_array())
            .map(|(k, _)| k.to_ascii_uppercase())
            .unwrap_or_default(),
        _ => String::new(),
    }
}

fn set(root: &mut Value, path: &[Seg], v: Value) {
    let mut cur = root;
    for (i, seg) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        cur = match seg {
            Seg::Key(k) => {
                if !cur.is_object() {
                    *cur = Value::Object(Map::new());
                }
                let Value::Object(m) = cur else { return };
                if last {
                    m.insert(k.clone(), v);
                    return;
                }
                m.entry(k.clone()).or_insert(Value::Null)
            }
            Seg::Index(idx) => {
                if !cur.is_array() {
                    *cur = Value::Array(Vec::new());
                }
                let Value::Array(a) = cur else { return };
                while a.len() <= *idx {
                    a.push(Value::Object(Map::new()));
                }
                if last {
                    a[*idx] = v;
                    return;
                }
                &mut a[*idx]
            }
        };
    }
}

/// Drops the bad value at `path` so parsing can go on (the key falls back to its default).
fn remove(root: &mut Value, path: &[Seg]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut cur = root;
    for seg in parents {
        cur = match (seg, cur) {
            (Seg::Key(k), Value::Object(m)) => match m.get_mut(k) {
                Some(v) => v,
                None => return false,
            },
            (Seg::Index(i), Value::Array(a)) => match a.get_mut(*i) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, cur) {
        (Seg::Key(k), Value::Object(m)) => m.remove(k).is_some(),
        // Keep indices stable for later messages: an empty mapping takes the bad element's place.
        (Seg::Index(i), Value::Array(a)) if *i < a.len() => {
            if a[*i] == Value::Object(Map::new()) {
                return false;
            }
            a[*i] = Value::Object(Map::new());
            true
        }
        _ => false,
    }
}

/// "unknown key `a.b`" with the closest known key at that level, if one is close.
fn unknown_key(path: &str, template: &Value) -> String {
    let (parent, key) = path.rsplit_once('.').unwrap_or(("", path));
    let mut level = template;
    for part in parent.split('.').filter(|p| !p.is_empty()) {
        let name = part.split('[').next().unwrap_or(part);
        level = match level.get(name) {
            Some(Value::Array(items)) => items.first().unwrap_or(&Value::Null),
            Some(v) => v,
            None => &Value::Null,
        };
    }
    let best = level.as_object().and_then(|m| {
        // Closest by edit distance, ties to the better Jaro-Winkler score.
        m.keys()
            .map(|k| (strsim::levenshtein(k, key), strsim::jaro_winkler(k, key), k))
            .filter(|(d, _, k)| *d <= 2.max(k.len() / 3))
            .min_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)))
            .map(|(_, _, k)| k.clone())
    });
    match best {
        Some(k) => format!("{path}: unknown key; did you mean `{k}`?"),
        None => format!("{path}: unknown key; remove it (see README for the keys)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(default)]
    struct Inner {
        url: Option<String>,
        timeout: u32,
    }
    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(default)]
    struct Item {
        name: Option<String>,
        max: u32,
    }
    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(default)]
    struct Root {
        cluster_id: Option<String>,
        prometheus: Inner,
        node_groups: Vec<Item>,
    }

    fn template() -> Value {
        serde_json::to_value(Root {
            node_groups: vec![Item::default()],
            ..Root::default()
        })
        .unwrap()
    }

    fn run(yaml: &str, env: &[(&str, &str)]) -> (Option<Root>, Vec<String>) {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let loaded = load("c.yaml", yaml, &env, "APP_", &["APP_TOKEN"], &template());
        let mut problems = loaded.problems;
        problems.extend(loaded.warnings.into_iter().map(|w| format!("warning: {w}")));
        (loaded.value, problems)
    }

    #[test]
    fn reports_every_type_error_and_unknown_key() {
        let (v, problems) = run(
            "cluster_id: x\nprometheus: {url: u, timeout: soon, urll: 1}\nnode_groups: [{name: a, max: -1}, {name: b, mx: 2}]\n",
            &[],
        );
        assert!(v.is_some());
        let all = problems.join("\n");
        assert!(all.contains("prometheus.timeout"), "{all}");
        assert!(all.contains("node_groups[0].max"), "{all}");
        assert!(
            all.contains("prometheus.urll: unknown key; did you mean `url`?"),
            "{all}"
        );
        assert!(
            all.contains("node_groups[1].mx: unknown key; did you mean `max`?"),
            "{all}"
        );
        assert_eq!(problems.len(), 4, "{all}");
    }

    #[test]
    fn env_overrides_resolve_nested_and_listed_keys() {
        let (v, problems) = run(
            "node_groups: [{name: a, max: 1}]\n",
            &[
                ("APP_PROMETHEUS_URL", "http://p:9090"),
                ("APP_CLUSTER_ID", "prod"),
                ("APP_NODE_GROUPS_0_MAX", "7"),
                ("APP_TOKEN", "secret"),
                ("OTHER", "x"),
            ],
        );
        assert!(problems.is_empty(), "{problems:?}");
        let v = v.unwrap();
        assert_eq!(v.prometheus.url.as_deref(), Some("http://p:9090"));
        assert_eq!(v.cluster_id.as_deref(), Some("prod"));
        assert_eq!(v.node_groups[0].max, 7);
    }

    #[test]
    fn unknown_env_names_are_warnings_not_problems() {
        let env = vec![(
            "APP_CONTROLLER_SERVICE_HOST".to_string(),
            "10.43.0.7".to_string(),
        )];
        let loaded: Loaded<Root> = load("c.yaml", "", &env, "APP_", &[], &template());
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
        assert!(loaded.value.is_some());
        assert!(
            loaded.warnings[0]
                .contains("APP_CONTROLLER_SERVICE_HOST matches no config key and is ignored"),
            "{:?}",
            loaded.warnings
        );
    }

    #[test]
    fn syntax_errors_and_wrong_top_level_are_reported() {
        let (v, problems) = run("a: [1, 2\n", &[]);
        assert!(v.is_none());
        assert!(problems[0].contains("not valid YAML"), "{problems:?}");
        let (_, problems) = run("- 1\n- 2\n", &[]);
        assert!(problems[0].contains("must be a mapping"));
    }
}
