//! Inference keeps convolution weights prepared between calls (`prepared`: packed for
//! small planes, Winograd-transformed for 3×3 layers): the prepared copy must follow every
//! in-place write to the weights and go when they are freed.
//! (A file of its own: the cache is process-wide, and other tests' convolutions would change
//! its count.)

use cnnkit_core::{no_grad, prepared::cached_weights, Conv2dArgs, DType, Generator, Result, Tensor};

/// The naive f64 convolution of the tensors' current values (stride 1, padding 1, 3×3).
fn naive(x: &Tensor, w: &Tensor) -> Result<Vec<f64>> {
    let (xs, ws) = (x.to_f64_vec()?, w.to_f64_vec()?);
    let (ci, h) = (x.shape()[1], x.shape()[2]);
    let co = w.shape()[0];
    let mut y = vec![0.0; co * h * h];
    for o in 0..co {
        for oy in 0..h {
            for ox in 0..h {
                let mut acc = 0.0;
                for c in 0..ci {
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (iy, ix) = ((oy + ky) as isize - 1, (ox + kx) as isize - 1);
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < h {
                                acc += xs[(c * h + iy as usize) * h + ix as usize] * ws[((o * ci + c) * 3 + ky) * 3 + kx];
                            }
                        }
                    }
                }
                y[(o * h + oy) * h + ox] = acc;
            }
        }
    }
    Ok(y)
}

fn close(a: &[f32], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(&p, &q)| (p as f64 - q).abs() < 1e-3)
}

#[test]
fn packed_weights_follow_writes_and_drops() -> Result<()> {
    let mut g = Generator::new(3);
    let x = Tensor::randn_with(&[1, 64, 7, 7], DType::F32, &mut g);
    let w = Tensor::randn_with(&[256, 64, 3, 3], DType::F32, &mut g).requires_grad_()?;
    let pad = Conv2dArgs { padding: (1, 1), ..Default::default() };
    let _ng = no_grad();
    let y = x.conv2d(&w, None, pad)?;
    assert!(close(&y.to_vec::<f32>()?, &naive(&x, &w)?));
    let packs = cached_weights();
    if cnnkit_kernels::packed::available() {
        assert!(packs >= 1, "a 256-channel 7×7 layer in no_grad keeps its weights packed");
    }
    // The same weights again: served from the cache, same result.
    assert_eq!(x.conv2d(&w, None, pad)?.to_vec::<f32>()?, y.to_vec::<f32>()?);
    // An optimizer-style in-place write: the next call must see the new values.
    w.update_data(|d: &mut [f32]| d.iter_mut().for_each(|v| *v *= -2.0))?;
    let y2 = x.conv2d(&w, None, pad)?;
    assert!(close(&y2.to_vec::<f32>()?, &naive(&x, &w)?), "stale packed weights after a write");
    // A view at an offset of the same storage is its own entry.
    let both = Tensor::randn_with(&[512, 64, 3, 3], DType::F32, &mut g);
    let second = both.narrow(0, 256, 256)?;
    assert!(second.same_storage(&both) && second.is_contiguous());
    assert!(close(&x.conv2d(&second, None, pad)?.to_vec::<f32>()?, &naive(&x, &second)?));
    let first = both.narrow(0, 0, 256)?;
    assert!(close(&x.conv2d(&first, None, pad)?.to_vec::<f32>()?, &naive(&x, &first)?));
    assert!(cached_weights() >= packs);
    // A Winograd layer at batch 1 keeps its transformed weights U the same way.
    let x3 = Tensor::randn_with(&[1, 32, 28, 28], DType::F32, &mut g);
    let w3 = Tensor::randn_with(&[32, 32, 3, 3], DType::F32, &mut g);
    let n0 = cached_weights();
    assert!(close(&x3.conv2d(&w3, None, pad)?.to_vec::<f32>()?, &naive(&x3, &w3)?));
    assert_eq!(cached_weights(), n0 + 1, "U kept");
    w3.update_data(|d: &mut [f32]| d.iter_mut().for_each(|v| *v *= 0.5))?;
    assert!(close(&x3.conv2d(&w3, None, pad)?.to_vec::<f32>()?, &naive(&x3, &w3)?), "stale U after a write");
    drop(w3);
    assert_eq!(cached_weights(), n0);
    // Freed weights take their packed copies with them.
    let before = cached_weights();
    drop((first, second, both));
    assert!(cached_weights() < before);
    Ok(())
}
