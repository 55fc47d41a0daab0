//! Where the Lambda mode's configuration comes from: the controller's YAML in an SSM parameter
//! (`SMARTSCALE_CONFIG_PARAMETER`, the one `pulumi up` writes, so a change reaches the next
//! invocation), else the file in the code package (`SMARTSCALE_CONFIG_FILE`, default
//! `$LAMBDA_TASK_ROOT/controller.yaml`, written by the same `pulumi up`). `SMARTSCALE_<PATH>`
//! environment overrides apply to either. When the parameter cannot be read or is invalid, the
//! packaged file is used and the invocation reports why: the cycle still runs.

use crate::config::{self, CONFIG_FILE_ENV, CONFIG_PARAMETER_ENV, Config, Purpose};
use crate::{Error, Result};
use std::path::PathBuf;

/// Where the configuration was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Parameter(String),
    File(PathBuf),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Parameter(p) => write!(f, "ssm:{p}"),
            Source::File(p) => write!(f, "file:{}", p.display()),
        }
    }
}

/// The configuration, where it came from, and why the preferred source was not used.
pub struct Loaded {
    pub config: Config,
    pub source: Source,
    pub problems: Vec<String>,
}

/// The sources named by the environment `env`: (parameter, file).
pub fn sources(env: &[(String, String)]) -> (Option<String>, Option<PathBuf>) {
    let get = |k: &str| {
        env.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let file = get(CONFIG_FILE_ENV).map(PathBuf::from).or_else(|| {
        get("LAMBDA_TASK_ROOT").map(|root| PathBuf::from(root).join("controller.yaml"))
    });
    (get(CONFIG_PARAMETER_ENV), file)
}

fn parse(source: &Source, text: &str, env: &[(String, String)]) -> Result<Config> {
    config::parse(&source.to_string(), text, env, Purpose::Controller).map_err(Error::Config)
}

/// Reads the configuration: the parameter first, the packaged file as the fallback.
pub async fn load(ssm: &aws_sdk_ssm::Client, env: &[(String, String)]) -> Result<Loaded> {
    let (parameter, file) = sources(env);
    let mut problems = Vec::new();
    if let Some(name) = &parameter {
        let source = Source::Parameter(name.clone());
        match read_parameter(ssm, name)
            .await
            .and_then(|text| parse(&source, &text, env))
        {
            Ok(config) => {
                return Ok(Loaded {
                    config,
                    source,
                    problems,
                });
            }
            Err(e) => problems.push(format!("{source}: {e}")),
        }
    }
    let Some(path) = file else {
        return Err(Error::ConfigSource(match problems.pop() {
            Some(p) => format!("{p}; and no packaged file to fall back on (set {CONFIG_FILE_ENV})"),
            None => format!(
                "no configuration: set {CONFIG_PARAMETER_ENV} (an SSM parameter with the controller's YAML) or {CONFIG_FILE_ENV}"
            ),
        }));
    };
    let source = Source::File(path.clone());
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::ConfigSource(
            problems
                .iter()
                .cloned()
                .chain([format!("{source}: {e}")])
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    let config = parse(&source, &text, env)?;
    if !problems.is_empty() {
        problems[0].push_str(&format!("; used {source} instead"));
    }
    Ok(Loaded {
        config,
        source,
        problems,
    })
}

async fn read_parameter(ssm: &aws_sdk_ssm::Client, name: &str) -> Result<String> {
    let out = ssm
        .get_parameter()
        .name(name)
        .with_decryption(true)
        .send()
        .await
        .map_err(|e| {
            Error::ConfigSource(format!(
                "GetParameter: {}",
                aws_sdk_ssm::error::DisplayErrorContext(e)
            ))
        })?;
    out.parameter
        .and_then(|p| p.value)
        .ok_or_else(|| Error::ConfigSource("the parameter has no value".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_packaged_file_defaults_to_the_task_root() {
        assert_eq!(
            sources(&env(&[("LAMBDA_TASK_ROOT", "/var/task")])),
            (None, Some(PathBuf::from("/var/task/controller.yaml")))
        );
        assert_eq!(
            sources(&env(&[
                ("LAMBDA_TASK_ROOT", "/var/task"),
                (CONFIG_FILE_ENV, "/opt/c.yaml"),
                (CONFIG_PARAMETER_ENV, "/smartscale/prod/controller/config"),
            ])),
            (
                Some("/smartscale/prod/controller/config".into()),
                Some(PathBuf::from("/opt/c.yaml"))
            )
        );
        assert_eq!(sources(&env(&[(CONFIG_PARAMETER_ENV, " ")])), (None, None));
    }

    #[tokio::test]
    async fn with_no_source_at_all_the_error_says_what_to_set() {
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        let ssm = aws_sdk_ssm::Client::new(&sdk);
        let Err(e) = load(&ssm, &[]).await else {
            panic!("no source, no config")
        };
        assert!(e.to_string().contains(CONFIG_PARAMETER_ENV), "{e}");
        // A missing packaged file names the file.
        let Err(e) = load(&ssm, &env(&[(CONFIG_FILE_ENV, "/nonexistent/c.yaml")])).await else {
            panic!("missing file")
        };
        assert!(e.to_string().contains("file:/nonexistent/c.yaml"), "{e}");
    }
}
