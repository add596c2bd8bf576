//! Module behaviour: PyTorch state_dict keys, strict loading, freezing, hooks, train/eval.

use cnnkit_core::{DType, Result, Tensor};
use cnnkit_nn::*;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A small ResNet-like block with named fields, as a user would write it.
struct Block {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    relu: ReLU,
    fc: Linear,
}

impl Module for Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.relu.call(&self.bn1.call(&self.conv1.call(x)?)?)?;
        self.fc.call(&h.mean(&[2, 3], false)?)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("conv1".into(), &self.conv1), ("bn1".into(), &self.bn1), ("relu".into(), &self.relu), ("fc".into(), &self.fc)]
    }
}

fn block() -> Block {
    Block {
        conv1: Conv2d::new(Conv2dConfig::new(3, 4, 3).padding(1).bias(false)).unwrap(),
        bn1: BatchNorm::new_2d(4).unwrap(),
        relu: ReLU::default(),
        fc: Linear::new(4, 2).unwrap(),
    }
}

#[test]
fn state_dict_keys_match_pytorch() {
    let model = Sequential::new().add(block()).add(Linear::new(2, 3).unwrap());
    let keys: Vec<String> = model.state_dict().keys().cloned().collect();
    assert_eq!(
        keys,
        vec![
            "0.bn1.bias",
            "0.bn1.num_batches_tracked",
            "0.bn1.running_mean",
            "0.bn1.running_var",
            "0.bn1.weight",
            "0.conv1.weight",
            "0.fc.bias",
            "0.fc.weight",
            "1.bias",
            "1.weight"
        ]
    );
    let names: Vec<String> = model.named_parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, vec!["0.conv1.weight", "0.bn1.weight", "0.bn1.bias", "0.fc.weight", "0.fc.bias", "1.weight", "1.bias"]);
    assert_eq!(model.num_parameters(), 4 * 3 * 9 + 4 + 4 + 8 + 2 + 6 + 3);
    assert!(model.summary().contains("(0.conv1)") || model.summary().contains("(conv1): Conv2d(3, 4"));
}

#[test]
fn strict_loading_reports_like_pytorch() {
    let a = block();
    let b = block();
    // A clean load copies values.
    let rep = b.load_state_dict(&a.state_dict(), true).unwrap();
    assert!(rep.is_clean());
    assert_eq!(a.conv1.weight.to_vec::<f32>().unwrap(), b.conv1.weight.to_vec::<f32>().unwrap());
    // Missing, unexpected and mis-shaped keys.
    let mut sd: BTreeMap<String, Tensor> = a.state_dict();
    sd.remove("fc.bias");
    sd.insert("extra.weight".into(), Tensor::zeros(&[1], DType::F32));
    sd.insert("fc.weight".into(), Tensor::zeros(&[5, 5], DType::F32));
    let err = b.load_state_dict(&sd, true).unwrap_err().to_string();
    assert!(err.contains("Missing key(s) in state_dict: \"fc.bias\""), "{err}");
    assert!(err.contains("Unexpected key(s) in state_dict: \"extra.weight\""), "{err}");
    assert!(err.contains("size mismatch for fc.weight"), "{err}");
    let rep = b.load_state_dict(&sd, false).unwrap();
    assert_eq!(rep.missing_keys, vec!["fc.bias"]);
    assert_eq!(rep.unexpected_keys, vec!["extra.weight"]);
    assert_eq!(rep.mismatched.len(), 1);
}

#[test]
fn freezing_and_train_eval() {
    let m = block();
    assert_eq!(m.set_requires_grad("", false).unwrap(), 5);
    assert_eq!(m.set_requires_grad("fc", true).unwrap(), 2);
    assert_eq!(m.trainable_parameters().len(), 2);
    let x = Tensor::randn(&[2, 3, 5, 5], DType::F32);
    m.forward(&x).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(m.conv1.weight.grad().is_none());
    assert!(m.fc.weight.grad().is_some());
    // Train mode updates running stats; eval mode uses and keeps them.
    let before = m.bn1.running_mean.as_ref().unwrap().to_vec::<f32>().unwrap();
    m.train(true);
    m.forward(&x).unwrap();
    let after = m.bn1.running_mean.as_ref().unwrap().to_vec::<f32>().unwrap();
    assert_ne!(before, after);
    m.eval();
    m.forward(&x).unwrap();
    assert_eq!(after, m.bn1.running_mean.as_ref().unwrap().to_vec::<f32>().unwrap());
    assert_eq!(m.bn1.num_batches_tracked.as_ref().unwrap().to_vec::<i64>().unwrap(), vec![2]);
}

#[test]
fn forward_hooks_capture_and_replace() {
    let model = Sequential::new().add(block()).add(Linear::new(2, 3).unwrap());
    let seen: Arc<Mutex<Vec<Vec<usize>>>> = Arc::default();
    let s2 = seen.clone();
    let h = register_forward_hook_at(&model, "0.bn1", move |_x, y| {
        s2.lock().unwrap().push(y.shape().to_vec());
        None
    })
    .unwrap();
    let x = Tensor::randn(&[2, 3, 6, 6], DType::F32);
    model.forward(&x).unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![vec![2, 4, 6, 6]]);
    // Grad-CAM's pattern: keep the activation and read its gradient after backward.
    let act: Arc<Mutex<Option<Tensor>>> = Arc::default();
    let a2 = act.clone();
    let h2 = register_forward_hook_at(&model, "0.relu", move |_x, y| {
        y.retain_grad();
        *a2.lock().unwrap() = Some(y.clone());
        None
    })
    .unwrap();
    model.forward(&x).unwrap().sum_all().unwrap().backward().unwrap();
    let a = act.lock().unwrap().clone().unwrap();
    assert_eq!(a.grad().unwrap().shape(), &[2, 4, 6, 6]);
    // A hook may replace the output.
    let h3 = register_forward_hook_at(&model, "1", |_x, y| Some(y.zeros_like())).unwrap();
    assert!(model.forward(&x).unwrap().to_vec::<f32>().unwrap().iter().all(|&v| v == 0.0));
    drop((h, h2, h3));
    model.forward(&x).unwrap();
    assert_eq!(seen.lock().unwrap().len(), 3, "dropped hooks must not run");
    assert!(register_forward_hook_at(&model, "nope", |_, _| None).is_err());
}

#[test]
fn safetensors_round_trip_is_atomic() {
    let dir = std::env::temp_dir().join(format!("cnnkit-st-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let m = block();
    let p = dir.join("m.safetensors");
    let meta = BTreeMap::from([("arch".to_string(), "block".to_string())]);
    serialize::save_safetensors(&p, &m.state_dict(), &meta).unwrap();
    let sd = serialize::load_safetensors(&p).unwrap();
    let m2 = block();
    m2.load_state_dict(&sd, true).unwrap();
    assert_eq!(m.fc.weight.to_vec::<f32>().unwrap(), m2.fc.weight.to_vec::<f32>().unwrap());
    let (_, md) = serialize::parse_safetensors(&std::fs::read(&p).unwrap()).unwrap();
    assert_eq!(md.get("arch").map(String::as_str), Some("block"));
    // No temporary files are left behind.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    // Corrupt files are typed errors naming the file.
    std::fs::write(&p, b"garbage").unwrap();
    let e = serialize::load_safetensors(&p).unwrap_err().to_string();
    assert!(e.contains("m.safetensors"), "{e}");
    std::fs::write(&p, [255u8, 255, 255, 255, 255, 255, 255, 127, 1, 2]).unwrap();
    assert!(serialize::load_safetensors(&p).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn layer_shapes_and_errors() {
    let x = Tensor::randn(&[2, 4, 9, 9], DType::F32);
    let same = Conv2d::new(Conv2dConfig::new(4, 6, 4).padding_same().dilation(2)).unwrap();
    assert_eq!(same.forward(&x).unwrap().shape(), &[2, 6, 9, 9]);
    let dw = Conv2d::new(Conv2dConfig::new(4, 8, 3).groups(4).stride(2)).unwrap();
    assert_eq!(dw.forward(&x).unwrap().shape(), &[2, 8, 4, 4]);
    assert!(Conv2d::new(Conv2dConfig::new(4, 6, 3).groups(4)).is_err());
    let up = ConvTranspose2d::new(ConvTranspose2dConfig::new(4, 2, 3).stride(2).padding(1).output_padding(1)).unwrap();
    assert_eq!(up.forward(&x).unwrap().shape(), &[2, 2, 18, 18]);
    let c1 = Conv1d::new(4, 3, 3).unwrap();
    assert_eq!(c1.forward(&Tensor::randn(&[2, 4, 10], DType::F32)).unwrap().shape(), &[2, 3, 8]);
    assert_eq!(PixelShuffle::new(2).forward(&x).unwrap().shape(), &[2, 1, 18, 18]);
    assert_eq!(ChannelShuffle::new(2).forward(&x).unwrap().shape(), x.shape());
    assert_eq!(Upsample::scale(2.0, UpsampleMode::Bilinear).forward(&x).unwrap().shape(), &[2, 4, 18, 18]);
    assert_eq!(ZeroPad2d::ltrb(1, 2, 0, 3).forward(&x).unwrap().shape(), &[2, 4, 12, 12]);
    assert_eq!(AdaptiveAvgPool2d::new((1, 1)).forward(&x).unwrap().shape(), &[2, 4, 1, 1]);
    assert!(Linear::new(3, 2).unwrap().forward(&x).is_err());
    assert!(BatchNorm::new_2d(3).unwrap().forward(&x).is_err());
    assert!(GroupNorm::new(3, 4).is_err());
    // Dropout: eval is the identity; train keeps about 1−p of the elements, scaled by 1/(1−p).
    let d = Dropout::new(0.25).unwrap();
    let ones = Tensor::ones(&[100, 100], DType::F32);
    let y = d.forward(&ones).unwrap().to_vec::<f32>().unwrap();
    let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / 1e4;
    assert!((kept - 0.75).abs() < 0.03, "kept {kept}");
    assert!(y.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
    d.set_own_training(false);
    assert_eq!(d.forward(&ones).unwrap().to_vec::<f32>().unwrap(), ones.to_vec::<f32>().unwrap());
    assert!(Dropout::new(1.5).is_err());
}

/// `Conv2d::call_act` (the activation fused into the convolution) gives what `call` followed by
/// the activation gives; a forward hook on the layer still sees the convolution's own output
/// (negative values included), because the layer then runs the two ops apart.
#[test]
fn conv_call_act_fuses_unless_hooked() {
    use cnnkit_core::Epilogue;
    let conv = Conv2d::new(Conv2dConfig::new(3, 8, 3).padding(1)).unwrap();
    let x = Tensor::randn(&[2, 3, 7, 7], DType::F32);
    let want = conv.call(&x).unwrap().relu().unwrap().to_vec::<f32>().unwrap();
    assert_eq!(conv.call_act(&x, Epilogue::Relu).unwrap().to_vec::<f32>().unwrap(), want);
    let clipped = conv.call(&x).unwrap().clamp(Some(0.0), Some(0.1)).unwrap().to_vec::<f32>().unwrap();
    assert_eq!(conv.call_act(&x, Epilogue::Clamp(0.0, 0.1)).unwrap().to_vec::<f32>().unwrap(), clipped);
    let saw_negative = Arc::new(Mutex::new(false));
    let s2 = saw_negative.clone();
    let h = register_forward_hook(&conv, move |_x, y| {
        *s2.lock().unwrap() = y.to_vec::<f32>().unwrap().iter().any(|&v| v < 0.0);
        None
    });
    assert_eq!(conv.call_act(&x, Epilogue::Relu).unwrap().to_vec::<f32>().unwrap(), want);
    assert!(*saw_negative.lock().unwrap(), "the hook saw the pre-activation output");
    drop(h);
    // A padding mode that needs a pad op first takes the separate ops as well.
    let reflect = Conv2d::new(Conv2dConfig::new(3, 4, 3).padding(1).padding_mode(cnnkit_core::PadMode::Reflect)).unwrap();
    let want = reflect.call(&x).unwrap().relu().unwrap().to_vec::<f32>().unwrap();
    assert_eq!(reflect.call_act(&x, Epilogue::Relu).unwrap().to_vec::<f32>().unwrap(), want);
}

/// Sequential runs Conv2d → ReLU and BatchNorm → ReLU6 pairs as one op each: the same output
/// and parameter gradients as the layers one by one; a hook on either layer of a pair turns
/// that pair's fusion off, and the hook sees the layer's own output.
#[test]
fn sequential_fuses_activations_unless_hooked() {
    use cnnkit_core::Generator;
    let build = || {
        cnnkit_core::manual_seed(3);
        Sequential::new()
            .add(Conv2d::new(Conv2dConfig::new(3, 8, 3).padding(1)).unwrap())
            .add(ReLU::default())
            .add(Conv2d::new(Conv2dConfig::new(8, 8, 3).padding(1).bias(false)).unwrap())
            .add(BatchNorm2d::new_2d(8).unwrap())
            .add(ReLU6::default())
    };
    let x = Tensor::randn_with(&[2, 3, 9, 9], DType::F32, &mut Generator::new(5)).mul_scalar(3.0).unwrap();
    // The layers one by one, as a reference.
    let reference = build();
    let mut h = x.clone();
    for (_, l) in reference.children() {
        h = l.call(&h).unwrap();
    }
    h.sum_all().unwrap().backward().unwrap();
    let grads = |m: &Sequential| m.parameters().iter().map(|p| p.grad().unwrap().to_vec::<f32>().unwrap()).collect::<Vec<_>>();
    let (want, want_grads) = (h.to_vec::<f32>().unwrap(), grads(&reference));
    let fused = build();
    let y = fused.forward(&x).unwrap();
    y.sum_all().unwrap().backward().unwrap();
    assert_eq!(y.to_vec::<f32>().unwrap(), want);
    assert_eq!(grads(&fused), want_grads);
    // A hook on the batch norm sees its own output (negative values included, which ReLU6
    // would have clipped), and the model's output is unchanged.
    let model = build();
    let seen_min = Arc::new(Mutex::new(0.0f32));
    let s2 = seen_min.clone();
    let handle = register_forward_hook_at(&model, "3", move |_x, y| {
        *s2.lock().unwrap() = y.to_vec::<f32>().unwrap().into_iter().fold(f32::MAX, f32::min);
        None
    })
    .unwrap();
    assert_eq!(model.forward(&x).unwrap().to_vec::<f32>().unwrap(), want);
    assert!(*seen_min.lock().unwrap() < 0.0, "the hook saw the batch norm's output before ReLU6");
    drop(handle);
}
