//! Transforms against torchvision (fixtures from tools/gen_transform_fixtures.py).

use cnnkit::core::{Generator, Tensor};
use cnnkit::transforms::*;

fn fixtures() -> std::collections::BTreeMap<String, Tensor> {
    cnnkit::nn::serialize::load_safetensors(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/transforms.safetensors")).unwrap()
}

fn close(case: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.shape(), want.shape(), "{case}: shape");
    let (a, b) = (got.to_f32_vec().unwrap(), want.to_f32_vec().unwrap());
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!((x - y).abs() <= 1e-5 * y.abs().max(1.0), "{case}: element {i}: {x} vs torchvision {y}");
    }
}

#[test]
fn functional_transforms_match_torchvision() {
    let t = fixtures();
    let x = |c: &str| t[&format!("{c}.x")].clone();
    let cases: Vec<(&str, Tensor)> = vec![
        ("resize_up", resize(&x("resize_up"), 17, 23).unwrap()),
        ("resize_down", resize(&x("resize_down"), 6, 5).unwrap()),
        ("center_crop", center_crop(&x("center_crop"), 6, 9).unwrap()),
        ("center_crop_pad", center_crop(&x("center_crop_pad"), 12, 11).unwrap()),
        ("crop", crop(&x("crop"), 2, 3, 5, 7).unwrap()),
        ("crop_outside", crop(&x("crop_outside"), -2, -3, 8, 9).unwrap()),
        ("hflip", flip(&x("hflip"), true).unwrap()),
        ("vflip", flip(&x("vflip"), false).unwrap()),
        ("gray1", grayscale(&x("gray1"), 1).unwrap()),
        ("gray3", grayscale(&x("gray3"), 3).unwrap()),
        ("normalize", normalize(&x("normalize"), &IMAGENET_MEAN_STD.0, &IMAGENET_MEAN_STD.1).unwrap()),
        ("brightness", adjust_brightness(&x("brightness"), 1.4).unwrap()),
        ("contrast", adjust_contrast(&x("contrast"), 0.6).unwrap()),
        ("saturation", adjust_saturation(&x("saturation"), 1.7).unwrap()),
        ("hue", adjust_hue(&x("hue"), 0.23).unwrap()),
        ("hue_neg", adjust_hue(&x("hue_neg"), -0.41).unwrap()),
        ("resized_crop", resized_crop(&x("resized_crop"), 1, 2, 7, 9, (12, 10)).unwrap()),
        ("rotate_33", rotate(&x("rotate_33"), 33.0).unwrap()),
        ("rotate_neg71", rotate(&x("rotate_neg71"), -71.0).unwrap()),
    ];
    for (case, got) in &cases {
        close(case, got, &t[&format!("{case}.y")]);
    }
    // ToTensor: the fixture's x holds the (H, W, C) bytes as floats.
    let hwc: Vec<u8> = x("to_tensor").to_f32_vec().unwrap().iter().map(|&v| v as u8).collect();
    close("to_tensor", &to_tensor(&hwc, 5, 6, 3).unwrap(), &t["to_tensor.y"]);
    assert_eq!(cases.len() + 1, t.len() / 2, "every fixture case is checked");
}

#[test]
fn random_pipelines_are_deterministic_under_a_seed() {
    let img = Tensor::rand(&[3, 20, 20], cnnkit::core::DType::F32);
    let pipe = Compose(vec![
        Box::new(RandomCrop { size: (16, 16), padding: 2 }),
        Box::new(RandomFlip { p: 0.5, horizontal: true }),
        Box::new(ColorJitter { brightness: 0.4, contrast: 0.4, saturation: 0.4, hue: 0.1 }),
        Box::new(Resize(24, 24)),
        Box::new(Normalize { mean: CIFAR10_MEAN_STD.0.to_vec(), std: CIFAR10_MEAN_STD.1.to_vec() }),
    ]);
    let a = pipe.apply(&img, &mut Generator::new(5)).unwrap();
    let b = pipe.apply(&img, &mut Generator::new(5)).unwrap();
    let c = pipe.apply(&img, &mut Generator::new(6)).unwrap();
    assert_eq!(a.shape(), &[3, 24, 24]);
    assert_eq!(a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
    assert_ne!(a.to_vec::<f32>().unwrap(), c.to_vec::<f32>().unwrap());
    let rrc = RandomResizedCrop::new(8, 8);
    for s in 0..50 {
        let (i, j, h, w) = rrc.params(20, 20, &mut Generator::new(s));
        assert!(i + h <= 20 && j + w <= 20 && h > 0 && w > 0);
        let area = (h * w) as f64 / 400.0;
        assert!((0.05..=1.0).contains(&area), "area fraction {area}");
    }
    assert_eq!(rrc.apply(&img, &mut Generator::new(1)).unwrap().shape(), &[3, 8, 8]);
    assert!(normalize(&img, &[0.5], &[0.2]).is_err());
    assert!(adjust_hue(&img, 0.7).is_err());
    assert!(RandomCrop { size: (40, 40), padding: 1 }.apply(&img, &mut Generator::new(0)).is_err());
}
