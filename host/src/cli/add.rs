//! `pizza-host add`: puts a new stage into `pipeline.toml` ahead of an existing one, so a
//! running host (which watches the file) starts it without a restart.
//!
//! The file is edited as text, at the spans the TOML parser reports, so its comments and
//! layout stay as the operator wrote them; it is replaced in one rename, so the host never reads
//! half of it. The component is checked (loaded, smoke-called with its settings) before the
//! file is touched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use toml_edit::{Document, Item};

use crate::config::Pipeline;
use crate::runtime::Runtime;

/// A stage to add.
#[derive(Debug)]
pub struct NewStage {
    /// Its name.
    pub name: String,
    /// Its component file (relative to the working directory, as given on the command line).
    pub component: PathBuf,
    /// The stage it goes ahead of: it takes that stage's input, and that stage reads its output.
    pub before: String,
    /// Its output topic (default `pizza-with-<name>`).
    pub output: Option<String>,
    /// Its `config` table.
    pub config: BTreeMap<String, String>,
    /// Where it starts reading when there is no position to take over (`from`).
    pub from: Option<crate::config::StartFrom>,
}

/// What [`add_stage`] wrote.
#[derive(Debug, PartialEq, Eq)]
pub struct Added {
    /// The topic the new stage reads.
    pub input: String,
    /// The topic it writes, which the stage it went ahead of now reads.
    pub output: String,
}

/// `add`: adds `stage` to the pipeline file at `path` and says what it rewired.
pub fn run(path: &Path, stage: &NewStage) -> anyhow::Result<()> {
    let added = add_stage(path, stage)?;
    println!(
        "{}: stage `{}` reads {} and writes {}, which `{}` now reads",
        path.display(),
        stage.name,
        added.input,
        added.output,
        stage.before
    );
    Ok(())
}

/// Adds `stage` to the pipeline file at `path`, ahead of `stage.before`.
pub fn add_stage(path: &Path, stage: &NewStage) -> anyhow::Result<Added> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let pipeline = Pipeline::load(path)?;
    if pipeline.stages.iter().any(|s| s.name == stage.name) {
        anyhow::bail!(
            "{} already has a stage named `{}`",
            path.display(),
            stage.name
        );
    }
    let Some(anchor) = pipeline.stages.iter().find(|s| s.name == stage.before) else {
        let names: Vec<&str> = pipeline.stages.iter().map(|s| s.name.as_str()).collect();
        anyhow::bail!(
            "{} has no stage `{}` to go ahead of (its stages: {})",
            path.display(),
            stage.before,
            names.join(", ")
        );
    };
    let added = Added {
        input: anchor.input.clone(),
        output: stage
            .output
            .clone()
            .unwrap_or_else(|| format!("pizza-with-{}", stage.name)),
    };
    if pipeline.stages.iter().any(|s| s.output == added.output) {
        anyhow::bail!(
            "another stage already writes `{}`; pick --output",
            added.output
        );
    }

    let settings = crate::config::default_stage_settings(stage.config.clone());
    Runtime::new(Some(crate::config::default_compile_cache()))?
        .load(&stage.name, &stage.component, &settings)
        .map_err(anyhow::Error::from)?;

    let folder = match path.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder,
        _ => Path::new("."),
    };
    let component = relative_to(&stage.component, folder)?;
    let mut entry = format!(
        "[[stage]]\nname = {}\ncomponent = {}\ninput = {}\noutput = {}\n",
        quoted(&stage.name),
        quoted(&component.to_string_lossy()),
        quoted(&added.input),
        quoted(&added.output),
    );
    if !stage.config.is_empty() {
        let pairs: Vec<String> = stage
            .config
            .iter()
            .map(|(key, value)| format!("{} = {}", quoted(key), quoted(value)))
            .collect();
        entry.push_str(&format!("config = {{ {} }}\n", pairs.join(", ")));
    }
    if let Some(from) = stage.from {
        entry.push_str(&format!("from = {}\n", quoted(&String::from(from))));
    }
    entry.push('\n');

    let (header_start, input_span) = anchor_spans(&text, &stage.before)?;
    let mut edited = text;
    // The later span first, so the earlier offset stays valid.
    edited.replace_range(input_span, &quoted(&added.output));
    edited.insert_str(header_start, &entry);
    replace_file(path, edited.as_bytes())
        .with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(added)
}

/// Where stage `name`'s `[[stage]]` header starts, and the span of its `input` value.
fn anchor_spans(text: &str, name: &str) -> anyhow::Result<(usize, std::ops::Range<usize>)> {
    let document = Document::parse(text.to_owned()).context("not valid TOML")?;
    let stages = document
        .get("stage")
        .and_then(Item::as_array_of_tables)
        .context("no [[stage]] tables")?;
    let table = stages
        .iter()
        .find(|t| t.get("name").and_then(Item::as_str) == Some(name))
        .with_context(|| format!("no [[stage]] named `{name}`"))?;
    let header = table.span().context("the stage's table has no position")?;
    let input = table
        .get("input")
        .and_then(Item::as_value)
        .and_then(|v| v.span())
        .with_context(|| format!("stage `{name}` has no `input = …` line to rewrite"))?;
    // Start of the header's line, so the new table goes on lines of its own.
    let line_start = text[..header.start].rfind('\n').map_or(0, |i| i + 1);
    Ok((line_start, input))
}

/// A TOML basic string.
fn quoted(text: &str) -> String {
    toml_edit::Value::from(text).to_string().trim().to_owned()
}

/// `path` as written in a pipeline file in `folder`: relative to it when it lies beneath it.
fn relative_to(path: &Path, folder: &Path) -> anyhow::Result<PathBuf> {
    let path = std::path::absolute(path)?;
    let folder = std::path::absolute(folder)?;
    Ok(path
        .strip_prefix(&folder)
        .map(Path::to_owned)
        .unwrap_or(path))
}

/// Writes `bytes` beside `path` and renames it over `path`: a host watching the file never
/// reads half of it.
fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let folder = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut temporary = tempfile::NamedTempFile::new_in(folder)?;
    std::io::Write::write_all(&mut temporary, bytes)?;
    temporary.persist(path).map_err(|err| err.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_find_the_anchor_and_its_input() {
        let text = "# top\n[[stage]]\nname = \"a\"\ninput = \"x\"\n\n# before b\n[[stage]]\nname = \"b\"\ninput = \"y\" # keep\n";
        let (start, input) = anchor_spans(text, "b").expect("spans");
        assert!(text[start..].starts_with("[[stage]]\nname = \"b\""));
        assert_eq!(&text[input], "\"y\"");
        assert!(anchor_spans(text, "c").is_err());
    }

    #[test]
    fn quoted_text_reads_back_as_itself() {
        for text in ["plain", "a\"b", "it's", "back\\slash", "line\nbreak", "ünï"] {
            let document: toml_edit::DocumentMut =
                format!("x = {}", quoted(text)).parse().expect("valid TOML");
            assert_eq!(document["x"].as_str(), Some(text));
        }
    }
}
