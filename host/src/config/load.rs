//! Reading `pipeline.toml`: parsing, resolving paths against the file's folder, filling in
//! derived defaults, and the checks that make a bad file fail at startup with a message naming
//! the key.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{ConfigError, DEMO_SAMPLE, Pipeline, default_compile_cache, default_storage_dir};

impl Pipeline {
    /// Reads and validates `path`; component paths come back resolved against its folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_owned(),
            cause,
        })?;
        let base = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        Self::parse(&text, base).map_err(|err| err.at(path))
    }

    /// Parses and validates `text`, resolving component paths against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Self, ConfigError> {
        let mut pipeline: Pipeline = toml::from_str(text).map_err(|cause| ConfigError::Parse {
            path: PathBuf::new(),
            cause: Box::new(cause),
        })?;
        let base = std::path::absolute(base).unwrap_or_else(|_| base.to_owned());
        for (index, stage) in pipeline.stages.iter_mut().enumerate() {
            stage.component = base.join(&stage.component);
            let at = format!("stage[{index}] ({:?}).sample", stage.name);
            stage.sample_event = read_sample(&base, &mut stage.sample, &at)?;
            let at = format!("stage[{index}] ({:?})", stage.name);
            stage.outputs = match (stage.output.is_empty(), stage.outputs.is_empty()) {
                (false, true) => vec![("main".to_owned(), stage.output.clone())],
                (true, false) => std::mem::take(&mut stage.outputs),
                (true, true) => {
                    return Err(ConfigError::Invalid {
                        path: PathBuf::new(),
                        message: format!(
                            "{at}: set `output` (a topic) or `outputs` (named topics)"
                        ),
                    });
                }
                (false, false) => {
                    return Err(ConfigError::Invalid {
                        path: PathBuf::new(),
                        message: format!(
                            "{at}: set either `output` or `outputs`, not both (`output = \"t\"` \
                             is `outputs = {{ main = \"t\" }}`)"
                        ),
                    });
                }
            };
            stage.output = stage.outputs[0].1.clone();
        }
        for join in &mut pipeline.joins {
            join.changelog
                .get_or_insert_with(|| format!("{}-join-{}", pipeline.group_prefix, join.name));
        }
        for (index, report) in pipeline.reports.iter_mut().enumerate() {
            report.component = base.join(&report.component);
            let at = format!("report[{index}] ({:?}).sample", report.name);
            report.sample_event = read_sample(&base, &mut report.sample, &at)?;
            report
                .changelog
                .get_or_insert_with(|| format!("{}-report-{}", pipeline.group_prefix, report.name));
        }
        if let Some(file) = &mut pipeline.admin.token_file {
            *file = base.join(&*file);
        }
        let cache = pipeline.compile_cache.take();
        pipeline.compile_cache = Some(match cache {
            Some(dir) => base.join(dir),
            None => default_compile_cache(),
        });
        let stores = pipeline.storage.dir.take();
        pipeline.storage.dir = Some(match stores {
            Some(dir) => base.join(dir),
            None => default_storage_dir(),
        });
        pipeline.validate()?;
        Ok(pipeline)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: PathBuf::new(),
            message,
        };
        if self.topics.partitions < 1 {
            return Err(invalid("topics.partitions must be at least 1".into()));
        }
        if self.topics.replication_factor.is_some_and(|r| r < 1) {
            return Err(invalid(
                "topics.replication_factor must be at least 1".into(),
            ));
        }
        if self.http.max_order_count < 1 {
            return Err(invalid("http.max_order_count must be at least 1".into()));
        }
        self.kafka_properties().map_err(invalid)?;
        let mut names = BTreeSet::new();
        for (index, stage) in self.stages.iter().enumerate() {
            let at = format!("stage[{index}] ({:?})", stage.name);
            check_name(&stage.name).map_err(|why| invalid(format!("{at}: {why}")))?;
            if !names.insert(stage.name.as_str()) {
                return Err(invalid(format!("{at}: another stage has the same name")));
            }
            if stage.outputs.iter().any(|(_, topic)| *topic == stage.input) {
                return Err(invalid(format!(
                    "{at}: input and output are the same topic {:?}; the stage would consume \
                     its own output forever",
                    stage.input
                )));
            }
            let mut output_names = BTreeSet::new();
            for (name, topic) in &stage.outputs {
                check_name(name).map_err(|why| invalid(format!("{at}: output {name:?}: {why}")))?;
                if !output_names.insert(name) {
                    return Err(invalid(format!("{at}: output {name:?} is declared twice")));
                }
                check_topic_name(topic)
                    .map_err(|why| invalid(format!("{at}: output {name:?}: {why}")))?;
            }
            if stage.timeout_ms == 0 || stage.memory_mib == 0 {
                return Err(invalid(format!(
                    "{at}: timeout_ms and memory_mib must be above 0"
                )));
            }
            if stage.retries > 10 {
                return Err(invalid(format!("{at}: retries must be at most 10")));
            }
            let dead_letter = stage.dead_letter_topic();
            for (key, topic) in [
                ("input", &stage.input),
                ("output", &stage.output),
                ("dead_letter", &dead_letter),
            ] {
                check_topic_name(topic).map_err(|why| invalid(format!("{at}: {key}: {why}")))?;
            }
        }
        let mut reports = BTreeSet::new();
        for (index, report) in self.reports.iter().enumerate() {
            let at = format!("report[{index}] ({:?})", report.name);
            check_name(&report.name).map_err(|why| invalid(format!("{at}: {why}")))?;
            if !reports.insert(report.name.as_str()) {
                return Err(invalid(format!("{at}: another report has the same name")));
            }
            if report.timeout_ms == 0 || report.memory_mib == 0 {
                return Err(invalid(format!(
                    "{at}: timeout_ms and memory_mib must be above 0"
                )));
            }
            let changelog = report.changelog_topic();
            for (key, topic) in [("input", report.input.as_str()), ("changelog", changelog)] {
                check_topic_name(topic).map_err(|why| invalid(format!("{at}: {key}: {why}")))?;
            }
        }
        let mut joins = BTreeSet::new();
        for (index, join) in self.joins.iter().enumerate() {
            let at = format!("join[{index}] ({:?})", join.name);
            check_name(&join.name).map_err(|why| invalid(format!("{at}: {why}")))?;
            if !joins.insert(join.name.as_str()) {
                return Err(invalid(format!("{at}: another join has the same name")));
            }
            let distinct: BTreeSet<&String> = join.inputs.iter().collect();
            if distinct.len() < 2 || distinct.len() != join.inputs.len() {
                return Err(invalid(format!(
                    "{at}: inputs must name at least two different topics, each once"
                )));
            }
            if join.inputs.contains(&join.output) {
                return Err(invalid(format!("{at}: output is also an input")));
            }
            if join.expire_after_ms == 0 || join.key.is_empty() {
                return Err(invalid(format!(
                    "{at}: expire_after_ms must be above 0 and key non-empty"
                )));
            }
            let dead_letter = join.dead_letter_topic();
            let changelog = join.changelog_topic();
            let topics = join.inputs.iter().map(|t| ("inputs", t.as_str()));
            let others = [
                ("output", join.output.as_str()),
                ("dead_letter", &dead_letter),
                ("changelog", changelog),
            ];
            for (key, topic) in topics.chain(others) {
                check_topic_name(topic).map_err(|why| invalid(format!("{at}: {key}: {why}")))?;
            }
        }
        // A stage's consumer group and transactional id are `<group_prefix>-<name>[.<instance>]`,
        // in one namespace with the order door's transactional id (`…-orders.<instance>`) and
        // a join's (`…-join-<join>`): sharing one, each would fence the other.
        for (index, stage) in self.stages.iter().enumerate() {
            let taken_by = if stage.name == "orders" {
                Some("the order door".to_owned())
            } else {
                stage
                    .name
                    .strip_prefix("join-")
                    .filter(|join| joins.contains(join))
                    .map(|join| format!("join {join:?}"))
            };
            if let Some(owner) = taken_by {
                return Err(invalid(format!(
                    "stage[{index}] ({:?}): its consumer group and transactional ids would be \
                     those of {owner}; choose another name",
                    stage.name
                )));
            }
        }
        for (key, topic) in [
            ("orders.topic", &self.orders.topic),
            ("orders.completed_topic", &self.orders.completed_topic),
            ("orders.orders_topic", &self.orders.orders_topic),
            ("orders.dropped_topic", &self.orders.dropped_topic),
        ] {
            check_topic_name(topic).map_err(|why| invalid(format!("{key}: {why}")))?;
        }
        Ok(())
    }

    /// The `[kafka]` table as librdkafka properties, with `${VAR}` references expanded.
    pub fn kafka_properties(&self) -> Result<BTreeMap<String, String>, String> {
        self.kafka
            .iter()
            .map(|(key, value)| {
                let raw = match value {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Float(f) => f.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    _ => return Err(format!("kafka.{key}: expected a string, number or boolean")),
                };
                let expanded = shellexpand::env(&raw)
                    .map_err(|err| format!("kafka.{key}: environment variable {}", err))?;
                Ok((key.clone(), expanded.into_owned()))
            })
            .collect()
    }

    /// Every topic the pipeline reads or writes, without repeats.
    pub fn topics(&self) -> BTreeSet<&str> {
        let mut topics = BTreeSet::from([
            self.orders.topic.as_str(),
            self.orders.completed_topic.as_str(),
            self.orders.orders_topic.as_str(),
            self.orders.dropped_topic.as_str(),
        ]);
        for stage in &self.stages {
            topics.insert(&stage.input);
            topics.extend(stage.outputs.iter().map(|(_, topic)| topic.as_str()));
        }
        topics
    }
}

impl ConfigError {
    /// The same error, naming `path` as the file it came from.
    fn at(self, file: &Path) -> Self {
        let path = file.to_owned();
        match self {
            ConfigError::Parse { cause, .. } => ConfigError::Parse { path, cause },
            ConfigError::Invalid { message, .. } => ConfigError::Invalid { path, message },
            read @ ConfigError::Read { .. } => read,
        }
    }
}

/// The sample event at `sample` (made absolute against `base`), or the demo's; a file that
/// cannot be read or is not JSON is an error naming the key `at`.
fn read_sample(
    base: &Path,
    sample: &mut Option<PathBuf>,
    at: &str,
) -> Result<Arc<str>, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        path: PathBuf::new(),
        message,
    };
    let Some(file) = sample else {
        return Ok(Arc::from(DEMO_SAMPLE));
    };
    *file = base.join(&*file);
    let text = std::fs::read_to_string(&*file)
        .map_err(|err| invalid(format!("{at}: cannot read {}: {err}", file.display())))?;
    serde_json::from_str::<serde_json::Value>(&text)
        .map_err(|err| invalid(format!("{at}: {} is not JSON: {err}", file.display())))?;
    Ok(Arc::from(text.trim()))
}

/// Stage and report names end up in group ids, topic names and URLs.
fn check_name(name: &str) -> Result<(), String> {
    let legal = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if name.is_empty() || !name.chars().all(legal) {
        return Err("name must be non-empty and use only letters, digits, '-' and '_'".into());
    }
    Ok(())
}

/// Kafka's own rules for topic names, checked here so the error names the key.
fn check_topic_name(topic: &str) -> Result<(), String> {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if topic.is_empty() || topic.len() > 249 || topic == "." || topic == ".." {
        return Err(format!("{topic:?} is not a valid topic name"));
    }
    if !topic.chars().all(legal) {
        return Err(format!(
            "{topic:?} is not a valid topic name (use letters, digits, '.', '_', '-')"
        ));
    }
    Ok(())
}
