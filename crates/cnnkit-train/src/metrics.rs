//! Classification metrics: top-1/top-5 accuracy, per-class accuracy, confusion matrix.

use cnnkit_core::{Error, Result, Tensor};

/// Accumulates predictions over an evaluation pass.
#[derive(Clone, Debug)]
pub struct ClassificationMetrics {
    pub num_classes: usize,
    /// confusion[true][predicted] counts.
    pub confusion: Vec<Vec<u64>>,
    pub top5_correct: u64,
    pub loss_sum: f64,
    pub count: u64,
}

impl ClassificationMetrics {
    pub fn new(num_classes: usize) -> Self {
        ClassificationMetrics { num_classes, confusion: vec![vec![0; num_classes]; num_classes], top5_correct: 0, loss_sum: 0.0, count: 0 }
    }

    /// Adds one batch. logits: (N, C); labels: (N) int64; `batch_loss` is the batch's mean loss.
    pub fn update(&mut self, logits: &Tensor, labels: &Tensor, batch_loss: f64) -> Result<()> {
        let c = self.num_classes;
        if logits.ndim() != 2 || logits.shape()[1] != c || labels.shape() != [logits.shape()[0]] {
            return Err(Error::mismatch("metrics", logits.shape(), labels.shape()));
        }
        let scores = logits.to_f32_vec()?;
        let y = labels.to_vec::<i64>()?;
        for (row, &t) in scores.chunks(c).zip(&y) {
            if t < 0 || t as usize >= c {
                return Err(Error::invalid("metrics", format!("label {t} out of range for {c} classes")));
            }
            // Rank of the true class: how many scores beat it (ties count for the truth).
            let truth = row[t as usize];
            let better = row.iter().filter(|&&s| s > truth).count();
            let pred = row.iter().enumerate().fold(0, |b, (i, &s)| if s > row[b] { i } else { b });
            self.confusion[t as usize][pred] += 1;
            if better < 5 {
                self.top5_correct += 1;
            }
        }
        self.loss_sum += batch_loss * y.len() as f64;
        self.count += y.len() as u64;
        Ok(())
    }

    pub fn accuracy(&self) -> f64 {
        let correct: u64 = (0..self.num_classes).map(|i| self.confusion[i][i]).sum();
        correct as f64 / self.count.max(1) as f64
    }
    pub fn top5_accuracy(&self) -> f64 {
        self.top5_correct as f64 / self.count.max(1) as f64
    }
    pub fn mean_loss(&self) -> f64 {
        self.loss_sum / self.count.max(1) as f64
    }
    /// Accuracy per true class (NaN-free: a class with no samples reports 0).
    pub fn per_class_accuracy(&self) -> Vec<f64> {
        self.confusion.iter().enumerate().map(|(i, row)| row[i] as f64 / row.iter().sum::<u64>().max(1) as f64).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_top1_top5_and_confusion() {
        let mut m = ClassificationMetrics::new(6);
        let logits = Tensor::from_vec(vec![0.9f32, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5], &[2, 6]).unwrap();
        let labels = Tensor::from_vec(vec![0i64, 0], &[2]).unwrap();
        m.update(&logits, &labels, 1.0).unwrap();
        assert_eq!(m.accuracy(), 0.5);
        assert_eq!(m.top5_accuracy(), 0.5); // class 0 ranks last of six in row 2
        assert_eq!(m.confusion[0][5], 1);
        assert_eq!(m.per_class_accuracy()[0], 0.5);
        assert!(m.update(&logits, &Tensor::from_vec(vec![9i64, 0], &[2]).unwrap(), 1.0).is_err());
    }
}
