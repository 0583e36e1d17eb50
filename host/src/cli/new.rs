//! `pizza-host new`: a new stage project in `functions/<name>`, in Rust, Python or JavaScript,
//! that builds with its language's documented command and passes `check` and `invoke` as it is.
//!
//! A stage of either contract: a topping (`pizza:stage/topping@0.1.0`, the default) or a
//! processor (`--world processor`, `pizza:stage/processor@0.2.0`).
//!
//! The templates are files in `new/` beside this module, with `{{name}}`, `{{field}}`,
//! `{{wit}}`, `{{sdk}}` and `{{workspace}}` to fill in. Inside a pizza-host checkout a project
//! uses the checkout's `wit/` folder, and a Rust processor its `crates/stage-sdk` (one
//! contract, no copies to drift); anywhere else it gets its own copy of the WIT, and a Rust
//! processor names the SDK it is given (`--sdk`).

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The language of a new stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Lang {
    /// Rust, built with `cargo component build --release`.
    #[default]
    Rust,
    /// Python, built with componentize-py.
    Python,
    /// JavaScript, built with jco (componentize-js).
    Js,
}

/// The contract a new stage implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum World {
    /// `pizza:stage/topping@0.1.0`: a pizza (JSON) in, the enriched pizza out.
    #[default]
    Topping,
    /// `pizza:stage/processor@0.2.0`: a whole record in, any number of records out.
    Processor,
}

/// What WASI's random interface says, which both contract versions import.
const RANDOM_WIT: (&str, &str) = (
    "deps/random/random.wit",
    include_str!("../../../wit/deps/random/random.wit"),
);

/// The WIT package of each world, for projects outside a checkout.
const TOPPING_WIT: [(&str, &str); 2] = [
    ("stage.wit", include_str!("../../../wit/stage.wit")),
    RANDOM_WIT,
];
const PROCESSOR_WIT: [(&str, &str); 2] = [
    ("stage.wit", include_str!("../../../wit/v0.2/stage.wit")),
    RANDOM_WIT,
];

/// Where a project outside a checkout keeps its copy of the contract. Not `wit/`: in a Rust
/// crate, cargo-component would take that folder for a target world of its own.
const OWN_WIT: &str = "stage-wit";

/// One template file: where it goes in the project, and its text.
type Template = (&'static str, &'static str);

const RUST: &[Template] = &[
    ("Cargo.toml", include_str!("new/rust/Cargo.toml.tmpl")),
    ("src/lib.rs", include_str!("new/rust/lib.rs.tmpl")),
];
const PYTHON: &[Template] = &[("app.py", include_str!("new/python/app.py.tmpl"))];
const JS: &[Template] = &[
    ("app.js", include_str!("new/js/app.js.tmpl")),
    ("package.json", include_str!("new/js/package.json.tmpl")),
];
const RUST_PROCESSOR: &[Template] = &[
    ("Cargo.toml", include_str!("new/processor/Cargo.toml.tmpl")),
    ("src/lib.rs", include_str!("new/processor/lib.rs.tmpl")),
];
const PYTHON_PROCESSOR: &[Template] = &[("app.py", include_str!("new/processor/app.py.tmpl"))];
const JS_PROCESSOR: &[Template] = &[
    ("app.js", include_str!("new/processor/app.js.tmpl")),
    (
        "package.json",
        include_str!("new/processor/package.json.tmpl"),
    ),
];

/// What `new` makes.
#[derive(Debug, Clone, Default)]
pub struct Spec {
    /// The language.
    pub lang: Lang,
    /// The contract.
    pub world: World,
    /// Where a Rust processor outside a checkout finds `pizza-stage-sdk`: a path or a git URL.
    pub sdk: Option<String>,
}

/// `new`: scaffolds the project in the working directory and prints the next steps.
pub fn run(name: &str, spec: &Spec) -> anyhow::Result<()> {
    let created = new_stage(Path::new(""), name, spec)?;
    let dir = created.dir.display();
    let component = created.component.display();
    println!("created {dir}");
    println!();
    println!("build it:   (cd {dir} && {})", created.build);
    println!("check it:   pizza-host check {component}");
    println!("try it:     pizza-host invoke {component}");
    println!("add it:     pizza-host add {name} {component} --before veggies");
    println!();
    println!("or by hand: this in pipeline.toml, and the next stage's input set to its output");
    println!();
    println!("[[stage]]");
    println!("name = \"{name}\"");
    println!("component = \"{component}\"");
    println!("input = \"pizza-with-meats\"");
    match spec.world {
        World::Topping => {
            println!("output = \"pizza-with-{name}\"");
            println!("# config = {{ choices = \"light,regular,extra\" }}");
        }
        World::Processor => {
            println!("outputs = {{ main = \"pizza-with-{name}\" }}   # more: name = \"topic\"");
        }
    }
    Ok(())
}

/// What was created, and how to go on.
#[derive(Debug)]
pub struct Scaffolded {
    /// The project folder.
    pub dir: PathBuf,
    /// The command that builds it, run in `dir`.
    pub build: String,
    /// The component the build writes (under `root`).
    pub component: PathBuf,
}

/// Creates `functions/<name>` under `root` as a stage project as `spec` says.
pub fn new_stage(root: &Path, name: &str, spec: &Spec) -> anyhow::Result<Scaffolded> {
    check_name(name)?;
    let lang = spec.lang;
    let dir = root.join("functions").join(name);
    if dir.exists() {
        anyhow::bail!("{} already exists; pick another name", dir.display());
    }
    let checkout = in_checkout(root);
    let sdk = match (&spec.sdk, checkout) {
        (Some(sdk), _) if sdk.contains("://") => format!("{{ git = \"{sdk}\" }}"),
        (Some(sdk), _) => format!("{{ path = \"{sdk}\" }}"),
        (None, true) => "{ path = \"../../crates/stage-sdk\" }".to_owned(),
        (None, false) if spec.world == World::Processor && lang == Lang::Rust => anyhow::bail!(
            "outside a pizza-host checkout, a Rust processor needs to be told where \
             pizza-stage-sdk is: --sdk <path to crates/stage-sdk, or the checkout's git URL>"
        ),
        (None, false) => String::new(),
    };
    let (wit, world_name) = match (spec.world, checkout) {
        (World::Topping, true) => ("../../wit", "topping"),
        (World::Processor, true) => ("../../wit/v0.2", "processor"),
        (world, false) => {
            let files = match world {
                World::Topping => TOPPING_WIT,
                World::Processor => PROCESSOR_WIT,
            };
            for (file, text) in files {
                write(&dir.join(OWN_WIT).join(file), text)?;
            }
            (
                OWN_WIT,
                if world == World::Topping {
                    "topping"
                } else {
                    "processor"
                },
            )
        }
    };
    let field = name.replace('-', "_");
    // A Rust project outside a checkout is a workspace of its own (with the profile of small
    // components); inside, it becomes a member of the checkout's workspace, and shares its
    // target folder and profiles.
    let workspace = if checkout {
        ""
    } else {
        "\n[profile.release]\nopt-level = \"s\"\nstrip = true\n\n[workspace]\n"
    };
    let templates = match (lang, spec.world) {
        (Lang::Rust, World::Topping) => RUST,
        (Lang::Python, World::Topping) => PYTHON,
        (Lang::Js, World::Topping) => JS,
        (Lang::Rust, World::Processor) => RUST_PROCESSOR,
        (Lang::Python, World::Processor) => PYTHON_PROCESSOR,
        (Lang::Js, World::Processor) => JS_PROCESSOR,
    };
    for (file, template) in templates {
        let text = template
            .replace("{{name}}", name)
            .replace("{{field}}", &field)
            .replace("{{wit}}", wit)
            .replace("{{sdk}}", &sdk)
            .replace("{{workspace}}", workspace);
        write(&dir.join(file), &text)?;
    }
    if checkout && lang == Lang::Rust {
        add_workspace_member(root, &format!("functions/{name}"))?;
    }
    let (build, component) = match lang {
        Lang::Rust => {
            let target = if checkout {
                root.join("target")
            } else {
                dir.join("target")
            };
            (
                "cargo component build --release".to_owned(),
                target.join(format!("wasm32-wasip1/release/pizza_stage_{field}.wasm")),
            )
        }
        Lang::Python => (
            format!("componentize-py -d {wit} -w {world_name} componentize app -o stage.wasm"),
            dir.join("stage.wasm"),
        ),
        Lang::Js => (
            "npm install && npm run build".to_owned(),
            dir.join("stage.wasm"),
        ),
    };
    Ok(Scaffolded {
        dir,
        build,
        component,
    })
}

/// Stage names become folder, crate, field and topic names: keep them to what all accept.
fn check_name(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_fits = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !starts_with_letter || !rest_fits || name.ends_with('-') || name.len() > 40 {
        anyhow::bail!(
            "stage name {name:?}: use lowercase letters, digits and dashes, starting with a \
             letter (at most 40), e.g. `oregano` or `extra-sauce`"
        );
    }
    Ok(())
}

/// Whether `root` is a pizza-host checkout: a Cargo workspace whose `wit/` holds the stage
/// contract.
fn in_checkout(root: &Path) -> bool {
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap_or_default();
    manifest.contains("[workspace]") && root.join("wit/stage.wit").is_file()
}

/// Lists `member` in the workspace manifest at `root`, keeping the file's layout.
fn add_workspace_member(root: &Path, member: &str) -> anyhow::Result<()> {
    let path = root.join("Cargo.toml");
    let text = std::fs::read_to_string(&path)?;
    let mut manifest: toml_edit::DocumentMut = text.parse().context("Cargo.toml is not TOML")?;
    let members = manifest["workspace"]["members"]
        .as_array_mut()
        .context("Cargo.toml has no [workspace] members list")?;
    if !members.iter().any(|m| m.as_str() == Some(member)) {
        members.push(member);
        std::fs::write(&path, manifest.to_string())?;
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_fit_every_use() {
        for good in ["oregano", "extra-sauce", "v2"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Oregano", "2x", "a_b", "a-", "../x", "a b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
