//! Built-in synthetic data that needs no download.
//!
//! `digits28`: a 28×28 grey-scale stand-in for MNIST — seven-segment digits 0–9 drawn with a
//! random offset, stroke width and brightness over Gaussian noise. A CNN must learn
//! translation-tolerant stroke detectors, as on MNIST, yet a small model reaches >95% in
//! seconds. Deterministic for a given seed.

use crate::core::{Generator, Result, Tensor};

/// Segments a..g of a seven-segment display lit for each digit.
const SEGMENTS: [&str; 10] = ["abcdef", "bc", "abged", "abgcd", "fgbc", "afgcd", "afgedc", "abc", "abcdefg", "abcdfg"];

/// Draws one digit into a 28×28 image (values in [0, 1] before noise).
fn draw(digit: usize, g: &mut Generator, img: &mut [f32]) {
    let (w, h) = (12usize, 20usize);
    let ox = 8 + g.below(7) as usize - 3;
    let oy = 4 + g.below(7) as usize - 3;
    let t = 2 + g.below(2) as usize;
    let bright = 0.6 + 0.4 * g.uniform() as f32;
    let mut rect = |x0: usize, y0: usize, x1: usize, y1: usize| {
        for y in y0..y1 {
            for x in x0..x1 {
                img[(oy + y) * 28 + ox + x] = bright;
            }
        }
    };
    let mid = h / 2 - t / 2;
    for s in SEGMENTS[digit].chars() {
        match s {
            'a' => rect(0, 0, w, t),
            'b' => rect(w - t, 0, w, h / 2 + 1),
            'c' => rect(w - t, h / 2, w, h),
            'd' => rect(0, h - t, w, h),
            'e' => rect(0, h / 2, t, h),
            'f' => rect(0, 0, t, h / 2 + 1),
            _ => rect(0, mid, w, mid + t),
        }
    }
}

/// `n` images x: (n, 1, 28, 28) f32 and labels y: (n) int64, classes balanced and shuffled.
pub fn digits28(n: usize, seed: u64) -> Result<(Tensor, Tensor)> {
    let mut g = Generator::new(seed);
    let mut x = vec![0f32; n * 28 * 28];
    let mut y = Vec::with_capacity(n);
    for (i, img) in x.chunks_mut(28 * 28).enumerate() {
        let digit = (i + g.below(10) as usize) % 10;
        draw(digit, &mut g, img);
        for v in img.iter_mut() {
            *v = (*v + 0.15 * g.normal() as f32).clamp(0.0, 1.0);
        }
        y.push(digit as i64);
    }
    Ok((Tensor::from_vec(x, &[n, 1, 28, 28])?, Tensor::from_vec(y, &[n])?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_balanced() {
        let (a, la) = digits28(500, 3).unwrap();
        let (b, lb) = digits28(500, 3).unwrap();
        assert_eq!(a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
        assert_eq!(la.to_vec::<i64>().unwrap(), lb.to_vec::<i64>().unwrap());
        let mut counts = [0; 10];
        la.to_vec::<i64>().unwrap().iter().for_each(|&c| counts[c as usize] += 1);
        assert!(counts.iter().all(|&c| c > 25), "{counts:?}");
        let v = a.to_vec::<f32>().unwrap();
        assert!(v.iter().all(|&p| (0.0..=1.0).contains(&p)));
    }
}

/// Class names of [`shapes`], in label order.
pub const SHAPE_CLASSES: [&str; 6] = ["circle", "square", "triangle", "star", "cross", "ring"];

/// One `shapes` sample's annotations: the object's box (x0, y0, x1, y1) in pixels.
pub type ShapeBox = [f32; 4];

/// The built-in `shapes` dataset (no download): one coloured circle, square, triangle, star,
/// cross or ring per image, with random size, position, rotation and colour, on a noisy
/// background of random tint. Returns images (n, channels, size, size) f32 in [0, 1],
/// labels (n) i64, each object's bounding box, and per-pixel masks (n, size, size) i64
/// (0 = background, label + 1 inside the shape) for detection and segmentation.
pub fn shapes(n: usize, size: usize, channels: usize, seed: u64) -> Result<(Tensor, Tensor, Vec<ShapeBox>, Tensor)> {
    use crate::core::Error;
    if size < 12 || !(channels == 1 || channels == 3) {
        return Err(Error::invalid("shapes", format!("needs size ≥ 12 and 1 or 3 channels (got size {size}, channels {channels})")));
    }
    let mut g = Generator::new(seed ^ 0x005A_A9E5);
    let k = SHAPE_CLASSES.len();
    let mut img = vec![0f32; n * channels * size * size];
    let mut mask = vec![0i64; n * size * size];
    let mut labels = Vec::with_capacity(n);
    let mut boxes = Vec::with_capacity(n);
    let s = size as f32;
    for i in 0..n {
        // Balanced classes in a shuffled order.
        let label = (i + g.below(k as u64) as usize) % k;
        // Size 25–37% of the image; the centre jitters ±15% around the middle, so the task
        // needs translation-tolerant shape features but a one-conv model can still learn it.
        let r = s * (0.25 + 0.12 * g.uniform() as f32);
        let cx = s * (0.35 + 0.3 * g.uniform() as f32);
        let cy = s * (0.35 + 0.3 * g.uniform() as f32);
        let rot = std::f32::consts::PI * 2.0 * g.uniform() as f32;
        let bg: Vec<f32> = (0..channels).map(|_| 0.2 * g.uniform() as f32).collect();
        // A foreground colour clearly brighter than the background in at least one channel.
        let fg: Vec<f32> = (0..channels).map(|_| 0.45 + 0.55 * g.uniform() as f32).collect();
        let (mut x0, mut y0, mut x1, mut y1) = (s, s, 0f32, 0f32);
        for py in 0..size {
            for px in 0..size {
                let (dx, dy) = (px as f32 + 0.5 - cx, py as f32 + 0.5 - cy);
                let (c, sn) = (rot.cos(), rot.sin());
                let (u, v) = (dx * c + dy * sn, -dx * sn + dy * c); // rotated coordinates
                let rho = (dx * dx + dy * dy).sqrt();
                let inside = match label {
                    0 => rho <= r,
                    1 => u.abs() <= r * 0.8 && v.abs() <= r * 0.8,
                    2 => {
                        // Equilateral triangle: inside all three half-planes.
                        (0..3).all(|e| {
                            let a = std::f32::consts::PI * 2.0 * e as f32 / 3.0;
                            u * a.cos() + v * a.sin() <= r * 0.5
                        })
                    }
                    3 => {
                        // Five-pointed star: radius oscillates with the angle.
                        let th = v.atan2(u);
                        let lobe = ((th * 5.0 / 2.0).cos()).abs();
                        rho <= r * (0.35 + 0.65 * lobe.powf(4.0))
                    }
                    4 => (u.abs() <= r * 0.22 && v.abs() <= r) || (v.abs() <= r * 0.22 && u.abs() <= r),
                    _ => rho <= r && rho >= r * 0.55,
                };
                let at = py * size + px;
                for ch in 0..channels {
                    let noise = 0.08 * g.normal() as f32;
                    let base = if inside { fg[ch] } else { bg[ch] };
                    img[((i * channels + ch) * size) * size + at] = (base + noise).clamp(0.0, 1.0);
                }
                if inside {
                    mask[i * size * size + at] = label as i64 + 1;
                    (x0, y0, x1, y1) = (x0.min(px as f32), y0.min(py as f32), x1.max(px as f32 + 1.0), y1.max(py as f32 + 1.0));
                }
            }
        }
        labels.push(label as i64);
        boxes.push([x0, y0, x1, y1]);
    }
    Ok((
        Tensor::from_vec(img, &[n, channels, size, size])?,
        Tensor::from_vec(labels, &[n])?,
        boxes,
        Tensor::from_vec(mask, &[n, size, size])?,
    ))
}

#[cfg(test)]
mod shape_tests {
    use super::*;

    #[test]
    fn shapes_are_deterministic_balanced_and_annotated() {
        let (x, y, boxes, m) = shapes(120, 32, 3, 7).unwrap();
        let (x2, _, _, _) = shapes(120, 32, 3, 7).unwrap();
        assert_eq!(x.to_vec::<f32>().unwrap(), x2.to_vec::<f32>().unwrap());
        assert_eq!(x.shape(), &[120, 3, 32, 32]);
        let labels = y.to_vec::<i64>().unwrap();
        let masks = m.to_vec::<i64>().unwrap();
        for c in 0..SHAPE_CLASSES.len() as i64 {
            assert!(labels.iter().filter(|&&l| l == c).count() >= 10);
        }
        for (i, (&l, b)) in labels.iter().zip(&boxes).enumerate() {
            let pm = &masks[i * 1024..(i + 1) * 1024];
            let area = pm.iter().filter(|&&v| v == l + 1).count();
            assert!(area > 15, "sample {i} ({}) has only {area} pixels", SHAPE_CLASSES[l as usize]);
            assert!(pm.iter().all(|&v| v == 0 || v == l + 1));
            assert!(b[0] < b[2] && b[1] < b[3] && b[2] <= 32.0 && b[3] <= 32.0);
        }
        assert!(shapes(4, 8, 3, 0).is_err());
    }
}
