//! `blindsight`: the command line. Each subcommand is a thin wrapper over the library.

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use blindsight_server::image_input::model_input;
use blindsight_server::model::Model;
use blindsight_server::plain::{forward, softmax};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "blindsight",
    version,
    about = "Private image classification with CKKS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Classify an image and print the class probabilities.
    Classify(ClassifyArgs),
}

#[derive(Args)]
struct ClassifyArgs {
    /// Classify IMAGE (PNG or JPEG) in the clear, with the f64 reference forward pass.
    #[arg(long, value_name = "IMAGE")]
    plaintext: PathBuf,
    /// Model directory holding manifest.json and weights.safetensors [default: the built-in model].
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
}

/// Errors print as one line with their context chain (`a: b: c`), whatever RUST_BACKTRACE says.
fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Classify(args) => classify(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_model(dir: Option<&Path>) -> anyhow::Result<Model> {
    match dir {
        Some(dir) => {
            Model::from_dir(dir).with_context(|| format!("loading model from {}", dir.display()))
        }
        None => Model::embedded().context("loading the built-in model"),
    }
}

fn classify(args: &ClassifyArgs) -> anyhow::Result<()> {
    let model = load_model(args.model.as_deref())?;
    let path = &args.plaintext;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let input =
        model_input(&bytes, &model).with_context(|| format!("reading {}", path.display()))?;
    let logits = forward(&model, &input)?;
    let classes = &model.metadata().classes;
    let mut ranked: Vec<(&str, f64)> = classes
        .iter()
        .map(String::as_str)
        .zip(softmax(&logits))
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let width = classes.iter().map(String::len).max().unwrap_or(0);
    let Some(&(label, _)) = ranked.first() else {
        anyhow::bail!("the model has no classes");
    };
    let mut report = format!("model: {}\nlabel: {label}\n", model.metadata().name);
    for (class, p) in &ranked {
        report += &format!("  {class:width$}  {p:.4}\n");
    }
    print_stdout(&report)
}

/// Writes to stdout; a reader that stopped early (`| head`) is not an error.
fn print_stdout(text: &str) -> anyhow::Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(()),
    }
}
