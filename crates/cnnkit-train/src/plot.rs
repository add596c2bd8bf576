//! PNG plots: training curves and the confusion matrix (plotters, bitmap backend, with an
//! embedded font so text renders on machines without system fonts).

use cnnkit_core::{Error, Result};
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Registration only fails on an unparsable font; the embedded one is known good.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::File { path: path.display().to_string(), msg: format!("cannot draw plot: {e}") }
}

/// Draws into a temporary PNG beside `path`, then renames it into place.
fn atomic_png(path: &Path, draw: impl FnOnce(&Path) -> std::result::Result<(), String>) -> Result<()> {
    register_font();
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "plot.png".into());
    let tmp = dir.join(format!(".{name}.{}.tmp.png", std::process::id()));
    let res = draw(&tmp);
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(plot_err(path, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| plot_err(path, e))
}

/// One curve: (label, points (epoch, value)).
pub type Series<'a> = (&'a str, Vec<(f64, f64)>);

/// Loss curves (left) and accuracy curves (right) against the epoch.
pub fn training_curves(path: &Path, losses: &[Series], accuracies: &[Series]) -> Result<()> {
    atomic_png(path, |tmp| {
        let root = BitMapBackend::new(tmp, (1100, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (left, right) = root.split_horizontally(550);
        panel(&left, "loss", losses, false)?;
        panel(&right, "accuracy", accuracies, true)?;
        root.present().map_err(|e| e.to_string())
    })
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    series: &[Series],
    unit: bool,
) -> std::result::Result<(), String> {
    let pts = series.iter().flat_map(|s| s.1.iter());
    let xmax = pts.clone().map(|p| p.0).fold(1.0f64, f64::max);
    let (mut ymin, mut ymax) = pts.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
    if unit {
        (ymin, ymax) = (if ymin.is_finite() { ymin.clamp(0.0, 1.0) } else { 0.0 }, 1.0);
    }
    if !ymin.is_finite() || !ymax.is_finite() || ymin >= ymax {
        (ymin, ymax) = (0.0, ymax.max(1.0));
    }
    let pad = (ymax - ymin) * 0.05;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d(0.0..xmax, (ymin - pad)..(ymax + pad))
        .map_err(|e| e.to_string())?;
    chart.configure_mesh().x_desc("epoch").label_style(("sans-serif", 13)).draw().map_err(|e| e.to_string())?;
    for (i, (label, s)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(s.iter().copied(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(*label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        chart.draw_series(s.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// A confusion-matrix heatmap: rows true class, columns predicted; cells show counts.
pub fn confusion_matrix(path: &Path, confusion: &[Vec<u64>], class_names: &[String]) -> Result<()> {
    let n = confusion.len();
    atomic_png(path, |tmp| {
        let cell = if n <= 10 { 60 } else { (600 / n.max(1)).max(6) } as u32;
        let side = cell * n as u32;
        let root = BitMapBackend::new(tmp, (side + 190, side + 150)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let area = root.margin(110, 40, 40, 150); // top, bottom, left, right
        root.draw(&Text::new("confusion matrix (rows: true, columns: predicted)", (10, 8), ("sans-serif", 18)))
            .map_err(|e| e.to_string())?;
        for (t, row) in confusion.iter().enumerate() {
            let total = row.iter().sum::<u64>().max(1) as f64;
            for (p, &count) in row.iter().enumerate() {
                let frac = count as f64 / total;
                // White → dark blue by the share of the true class predicted here.
                let shade = |c: f64| (255.0 - frac * (255.0 - c)) as u8;
                let color = RGBColor(shade(25.0), shade(70.0), shade(160.0));
                let (x0, y0) = (p as i32 * cell as i32, t as i32 * cell as i32);
                area.draw(&Rectangle::new([(x0, y0), (x0 + cell as i32, y0 + cell as i32)], color.filled())).map_err(|e| e.to_string())?;
                if cell >= 30 {
                    let txt = if frac > 0.5 { WHITE } else { BLACK };
                    area.draw(&Text::new(
                        count.to_string(),
                        (x0 + 6, y0 + cell as i32 / 2 - 7),
                        ("sans-serif", 14).into_font().color(&txt),
                    ))
                    .map_err(|e| e.to_string())?;
                }
            }
            if cell >= 12 {
                let name = class_names.get(t).cloned().unwrap_or_else(|| t.to_string());
                root.draw(&Text::new(
                    name.clone(),
                    (40 + side as i32 + 8, 110 + t as i32 * cell as i32 + cell as i32 / 2 - 7),
                    ("sans-serif", 13),
                ))
                .map_err(|e| e.to_string())?;
                root.draw(&Text::new(name, (40 + t as i32 * cell as i32 + 2, 92), ("sans-serif", 12))).map_err(|e| e.to_string())?;
            }
        }
        root.present().map_err(|e| e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_pngs_atomically() {
        let dir = std::env::temp_dir().join(format!("cnnkit-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("curves.png");
        training_curves(
            &p,
            &[("train", vec![(1.0, 2.0), (2.0, 1.0)]), ("test", vec![(1.0, 2.2), (2.0, 1.3)])],
            &[("test", vec![(1.0, 0.5), (2.0, 0.8)])],
        )
        .unwrap();
        let c = dir.join("confusion.png");
        confusion_matrix(&c, &[vec![5, 1], vec![0, 6]], &["cat".into(), "dog".into()]).unwrap();
        if let Ok(keep) = std::env::var("CNNKIT_KEEP_PLOTS") {
            std::fs::copy(&p, format!("{keep}/curves.png")).unwrap();
            let names: Vec<String> = (0..10).map(|i| format!("class{i}")).collect();
            let conf: Vec<Vec<u64>> = (0..10).map(|i| (0..10).map(|j| if i == j { 90 } else { (i + j) as u64 % 4 }).collect()).collect();
            confusion_matrix(std::path::Path::new(&format!("{keep}/confusion.png")), &conf, &names).unwrap();
        }
        for f in [&p, &c] {
            let b = std::fs::read(f).unwrap();
            assert_eq!(&b[1..4], b"PNG");
        }
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2, "no temporary files left");
        std::fs::remove_dir_all(&dir).ok();
    }
}
