//! `cnnkit`: the command-line front of the library. Thin: parse flags, call the library,
//! print human output on stderr and results (JSON with --json, last line) on stdout.
//! Every error is one line on stderr and exit code 2.

mod bench;
mod deploy;
mod suite;
mod train;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cnnkit", version, about = "Convolutional neural networks in pure Rust: build, train, explain and deploy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model (default: the seed's SimpleCNN on the built-in shapes data).
    Train(Box<train::TrainArgs>),
    /// Fine-tune pretrained weights on a dataset with a new classifier head (the seed's §4.1):
    /// `cnnkit finetune --model resnet18 --weights resnet18.pth --freeze backbone`.
    Finetune(Box<train::FinetuneArgs>),
    /// Convert PyTorch weights (.pth/.pt, zip or legacy) to safetensors, without Python.
    Convert { input: std::path::PathBuf, output: std::path::PathBuf },
    /// Run a model on a .npy batch and write the output as .npy (the whole batch in one call).
    Infer(Box<deploy::InferArgs>),
    /// Export a zoo model or checkpoint to ONNX (opset 17, dynamic batch).
    Export(Box<deploy::ExportArgs>),
    /// List the model names `--model` accepts.
    Models,
    /// Evaluate a checkpoint on a test set.
    Eval(train::EvalArgs),
    /// Classify image files with a checkpoint.
    Predict(train::PredictArgs),
    /// Dataset files: `cnnkit data download mnist --dir data/mnist`.
    Data {
        #[command(subcommand)]
        what: DataCmd,
    },
    /// Measure kernels and training steps.
    Bench {
        #[command(subcommand)]
        what: bench::BenchCmd,
    },
}

#[derive(Subcommand)]
enum DataCmd {
    /// Fetch mnist | fashion-mnist | kmnist | cifar10 | cifar100 from the public mirrors,
    /// verify checksums, resume partial downloads.
    Download {
        name: String,
        #[arg(long)]
        dir: std::path::PathBuf,
        /// Base URL replacing the canonical mirror (also CNNKIT_DATA_MIRROR).
        #[arg(long)]
        mirror: Option<String>,
    },
}

fn main() {
    if std::env::var_os("CNNKIT_NO_MALLOPT").is_none() {
        cnnkit::core::retain_freed_memory();
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // Help and version are not errors.
            if matches!(e.kind(), clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion) {
                let _ = e.print();
                std::process::exit(0);
            }
            let msg = e.to_string();
            let first = msg.lines().find(|l| !l.trim().is_empty()).unwrap_or("invalid arguments");
            eprintln!("{}", first.trim());
            std::process::exit(2);
        }
    };
    let result = match cli.command {
        Command::Bench { what } => bench::run(what),
        Command::Data { what: DataCmd::Download { name, dir, mirror } } => {
            use std::io::IsTerminal;
            cnnkit::data::download::download(&name, &dir, mirror.as_deref(), std::io::stderr().is_terminal()).map(|files| {
                for f in files {
                    println!("{}", f.display());
                }
            })
        }
        Command::Train(a) => train::train(*a),
        Command::Finetune(a) => train::finetune(*a),
        Command::Infer(a) => deploy::infer(*a),
        Command::Export(a) => deploy::export(*a),
        Command::Convert { input, output } => cnnkit::io::convert_to_safetensors(&input, &output).map(|n| {
            eprintln!("wrote {n} tensors to {}", output.display());
        }),
        Command::Models => {
            for name in cnnkit::models::MODEL_NAMES {
                println!("{name}");
            }
            Ok(())
        }
        Command::Eval(a) => train::eval(a),
        Command::Predict(a) => train::predict(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
}
