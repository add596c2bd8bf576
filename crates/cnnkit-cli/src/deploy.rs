//! `cnnkit infer`, `cnnkit export`, and the model loading `cnnkit bench infer` shares: a model
//! comes from an ONNX file, from a zoo name plus weights (.pth/.pt/safetensors), or from a
//! training checkpoint. Tensors travel as numpy .npy files (float32, C order).

use clap::Args;
use cnnkit::core::{with_no_grad, Error, Result, Tensor};
use cnnkit::nn::graph::{Graph, NodeTime};
use cnnkit::nn::{Module, ModuleExt};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A cnnkit model: a zoo architecture with weights, or a checkpoint.
#[derive(Args, Clone)]
pub struct ModelSource {
    /// A zoo architecture (`cnnkit models` lists them), with --weights.
    #[arg(long, conflicts_with = "checkpoint")]
    pub model: Option<String>,
    /// Weights for --model: a PyTorch state_dict (.pth/.pt) or safetensors.
    #[arg(long, requires = "model")]
    pub weights: Option<PathBuf>,
    /// Classes of --model's head (default: read from the weights).
    #[arg(long, requires = "model")]
    pub num_classes: Option<usize>,
    /// A checkpoint written by `cnnkit train` / `cnnkit finetune`.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
}

/// A runnable model: a module (zoo or checkpoint) or an imported ONNX graph.
pub enum Loaded {
    Module(Box<dyn Module>),
    Graph(Graph),
}

impl Loaded {
    /// x: the model's input batch → its first output.
    pub fn run(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Loaded::Module(m) => with_no_grad(|| m.forward(x)),
            Loaded::Graph(g) => {
                g.run(&[(first_input(g)?, x.clone())])?.into_iter().next().ok_or_else(|| Error::invalid("onnx", "the graph has no outputs"))
            }
        }
    }
}

/// The name of the graph's first input, which a single-input model is fed by.
fn first_input(g: &Graph) -> Result<&str> {
    g.inputs.first().map(|i| i.name.as_str()).ok_or_else(|| Error::invalid("onnx", "the graph has no inputs"))
}

fn file_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::File { path: path.display().to_string(), msg: msg.into() }
}

/// Loads the model to run: the ONNX file `onnx`, or the module `src` names described as a
/// graph; either way planned for inference (BatchNorm folded into the convolutions). A
/// module that cannot be described as a graph runs its forward directly.
pub fn load(onnx: Option<&Path>, src: &ModelSource, input_chw: [usize; 3]) -> Result<Loaded> {
    let graph = match onnx {
        Some(p) => cnnkit::onnx::load_onnx(p)?,
        None => {
            let m = load_module(src, input_chw)?;
            let [c, h, w] = input_chw;
            match cnnkit::nn::graph::module_to_graph(m.as_ref(), &[None, Some(c), Some(h), Some(w)]) {
                Ok(g) => g,
                Err(_) => return Ok(Loaded::Module(m)),
            }
        }
    };
    Ok(Loaded::Graph(cnnkit::nn::graph::optimize_for_inference(&graph)?))
}

/// Loads the module `src` names (a zoo model with weights, or a checkpoint), in eval mode. `input_chw`: (C, H, W) of the data it will see, used to
/// build zoo models (their stems and the seed models' classifier sizes depend on it).
pub fn load_module(src: &ModelSource, input_chw: [usize; 3]) -> Result<Box<dyn Module>> {
    if let Some(ck) = &src.checkpoint {
        let (m, _) = crate::train::restore(ck)?;
        return Ok(m);
    }
    let name = src
        .model
        .as_deref()
        .ok_or_else(|| Error::invalid("model", "give --onnx M.onnx, --model NAME --weights W, or --checkpoint CKPT"))?;
    let weights =
        src.weights.as_ref().ok_or_else(|| Error::invalid("--weights", format!("--model {name} needs --weights W.pth|W.safetensors")))?;
    let sd = cnnkit::io::load_state_dict_file(weights)?;
    let head = format!("{}.weight", cnnkit::models::head_name(name)?);
    let classes = match (src.num_classes, sd.get(&head)) {
        (Some(n), _) => n,
        (None, Some(w)) => w.shape()[0],
        (None, None) => return Err(file_err(weights, format!("no '{head}' in the weights to size the head; give --num-classes"))),
    };
    let [c, h, w] = input_chw;
    let m = cnnkit::models::build(name, c, h, w, classes)?;
    m.load_state_dict(&sd, true).map_err(|e| file_err(weights, e.to_string()))?;
    m.eval();
    Ok(m)
}

/// "1x3x224x224" → [1, 3, 224, 224].
pub fn parse_shape(s: &str) -> Result<Vec<usize>> {
    let dims: Option<Vec<usize>> = s.split(['x', 'X', ',']).map(|d| d.trim().parse().ok().filter(|&v| v > 0)).collect();
    match dims {
        Some(d) if d.len() == 4 => Ok(d),
        _ => Err(Error::invalid("--input-shape", format!("'{s}' is not N×C×H×W with positive sizes (e.g. 1x3x224x224)"))),
    }
}

/// Checks `x` against an ONNX graph's declared input shape (dynamic dims match anything).
fn check_graph_input(g: &Graph, x: &Tensor, path: &Path) -> Result<()> {
    if let Some(inp) = g.inputs.first() {
        let ok = inp.shape.len() == x.ndim() && inp.shape.iter().zip(x.shape()).all(|(d, &s)| d.is_none_or(|d| d == s));
        if !ok {
            let want: Vec<String> = inp.shape.iter().map(|d| d.map_or("?".into(), |v| v.to_string())).collect();
            return Err(file_err(path, format!("input has shape {:?} but the model expects [{}]", x.shape(), want.join(", "))));
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct InferArgs {
    /// An ONNX model (e.g. from torch.onnx.export).
    #[arg(long, conflicts_with_all = ["model", "checkpoint"])]
    onnx: Option<PathBuf>,
    #[command(flatten)]
    source: ModelSource,
    /// Input batch: a float32 .npy of shape (N, C, H, W).
    #[arg(long)]
    input: PathBuf,
    /// Where to write the output (float32 .npy), e.g. logits (N, classes).
    #[arg(long)]
    output: PathBuf,
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long)]
    json: bool,
}

pub fn infer(a: InferArgs) -> Result<()> {
    crate::train::threads(a.threads)?;
    let x = cnnkit::io::read_npy(&a.input)?;
    if x.ndim() != 4 {
        return Err(file_err(&a.input, format!("expected an (N, C, H, W) batch, found shape {:?}", x.shape())));
    }
    let s = x.shape().to_vec();
    let model = load(a.onnx.as_deref(), &a.source, [s[1], s[2], s[3]])?;
    if let (Loaded::Graph(g), Some(p)) = (&model, &a.onnx) {
        check_graph_input(g, &x, p)?;
    }
    let t = Instant::now();
    let y = model.run(&x).map_err(|e| file_err(&a.input, e.to_string()))?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    cnnkit::io::write_npy(&a.output, &y.to_dtype(cnnkit::core::DType::F32)?.contiguous()?)?;
    eprintln!("{} → {} {:?} in {ms:.1} ms", a.input.display(), a.output.display(), y.shape());
    if a.json {
        println!("{}", json!({"input": a.input, "output": a.output, "input_shape": s, "output_shape": y.shape(), "ms": ms}));
    }
    Ok(())
}

#[derive(Args)]
pub struct ExportArgs {
    #[command(flatten)]
    source: ModelSource,
    /// The ONNX file to write (opset 17).
    #[arg(long)]
    onnx: PathBuf,
    /// Example input shape N×C×H×W (default 1x3x224x224, or the checkpoint's image size);
    /// the batch dimension is exported as dynamic.
    #[arg(long)]
    input_shape: Option<String>,
    #[arg(long)]
    json: bool,
}

pub fn export(a: ExportArgs) -> Result<()> {
    let out = a.onnx.clone();
    if a.source.model.is_none() && a.source.checkpoint.is_none() {
        return Err(Error::invalid("export", "give --model NAME --weights W or --checkpoint CKPT"));
    }
    let shape = match (&a.input_shape, &a.source.checkpoint) {
        (Some(s), _) => parse_shape(s)?,
        (None, Some(ck)) => {
            let c = cnnkit::train::Checkpoint::load(ck)?.config;
            let d = |k: &str| c[k].as_u64().unwrap_or(0) as usize;
            vec![1, d("in_channels"), d("height"), d("width")]
        }
        (None, None) => vec![1, 3, 224, 224],
    };
    let m = load_module(&a.source, [shape[1], shape[2], shape[3]])?;
    let t = Instant::now();
    cnnkit::onnx::export_module(m.as_ref(), &shape, &out)?;
    let nodes = cnnkit::onnx::load_onnx(&out)?.nodes.len();
    eprintln!("wrote {} ({nodes} nodes, input {:?} with a dynamic batch) in {:.1} s", out.display(), shape, t.elapsed().as_secs_f64());
    if a.json {
        println!("{}", json!({"onnx": out, "input_shape": shape, "nodes": nodes, "parameters": m.num_parameters()}));
    }
    Ok(())
}

/// `cnnkit bench infer`: the median latency of one forward pass.
/// Median latency (ms) of `iters` runs after two warm-up runs, the model's label, and with
/// `profile` the median time of each graph node over as many more runs (None for a model that
/// runs as a module, without a graph).
pub fn bench_infer(
    onnx: Option<&Path>,
    src: &ModelSource,
    shape: &[usize],
    iters: usize,
    profile: bool,
) -> Result<(f64, String, Option<Vec<NodeTime>>)> {
    let x = Tensor::randn(shape, cnnkit::core::DType::F32);
    let model = match (onnx, &src.model, &src.weights) {
        (None, Some(name), None) => {
            // No weights needed to time a zoo model: torchvision's initialisation.
            let m = cnnkit::models::build(name, shape[1], shape[2], shape[3], src.num_classes.unwrap_or(1000))?;
            m.eval();
            let g = cnnkit::nn::graph::module_to_graph(m.as_ref(), &[None, Some(shape[1]), Some(shape[2]), Some(shape[3])])?;
            Loaded::Graph(cnnkit::nn::graph::optimize_for_inference(&g)?)
        }
        _ => load(onnx, src, [shape[1], shape[2], shape[3]])?,
    };
    let label = onnx.map(|p| p.display().to_string()).or_else(|| src.model.clone()).unwrap_or_else(|| "checkpoint".into());
    // The whole loop on one pool worker, as a serving loop would run, with one recycling scope
    // over all runs: from the second run on, every activation reuses a buffer of the run
    // before (no allocation, no zero-fill). A graph is planned once, before the loop.
    let planned = match &model {
        Loaded::Graph(g) => Some((g.planned(), first_input(g)?)),
        Loaded::Module(_) => None,
    };
    let mut times = cnnkit::core::on_worker(|| -> Result<Vec<f64>> {
        let _recycle = cnnkit::core::recycle_buffers();
        let mut times = Vec::new();
        for i in 0..iters + 2 {
            let t = Instant::now();
            match &planned {
                Some((p, name)) => drop(p.run(&[(name, x.clone())])?),
                None => drop(model.run(&x)?),
            }
            if i >= 2 {
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        Ok(times)
    })?;
    times.sort_by(f64::total_cmp);
    let nodes = match (&model, profile) {
        (Loaded::Graph(g), true) => Some(profile_graph(g, &x, iters)?),
        _ => None,
    };
    Ok((times[times.len() / 2], label, nodes))
}

/// Each node's median time over `iters` profiled runs of `g` on x (separate from the timed
/// runs: reading the clock around every node costs a little).
fn profile_graph(g: &Graph, x: &Tensor, iters: usize) -> Result<Vec<NodeTime>> {
    let (name, planned) = (first_input(g)?, g.planned());
    let runs = cnnkit::core::on_worker(|| -> Result<Vec<Vec<NodeTime>>> {
        let _recycle = cnnkit::core::recycle_buffers();
        (0..iters.max(1)).map(|_| Ok(planned.run_profiled(&[(name, x.clone())])?.1)).collect()
    })?;
    let mut med = runs[0].clone();
    for (i, node) in med.iter_mut().enumerate() {
        let mut v: Vec<f64> = runs.iter().filter_map(|r| r.get(i).map(|n| n.ms)).collect();
        v.sort_by(f64::total_cmp);
        node.ms = v[v.len() / 2];
    }
    Ok(med)
}
