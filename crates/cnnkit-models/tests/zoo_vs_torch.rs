//! Every zoo architecture against torchvision: identical state_dict keys and shapes, and the
//! same eval-mode output (≤ 1e-4 of the output's scale) with identical formula weights.
//! Reference: tools/gen_zoo_fixtures.py (torchvision, float64).

mod common;
use cnnkit_nn::ModuleExt;
use common::*;
use std::collections::BTreeMap;

fn check(name: &str) {
    let cases = cases();
    let case = cases.get(name).unwrap_or_else(|| panic!("no fixture for {name}"));
    let side = case.input[2];
    let model = cnnkit_models::build(name, 3, side, side, 10).unwrap();
    model.eval();
    // The same keys and shapes as torchvision's state_dict.
    let ours: BTreeMap<String, Vec<usize>> = model.state_dict().into_iter().map(|(k, t)| (k, t.shape().to_vec())).collect();
    let theirs: BTreeMap<String, Vec<usize>> = case.keys.iter().cloned().collect();
    let missing: Vec<_> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
    let extra: Vec<_> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
    assert!(missing.is_empty() && extra.is_empty(), "{name}: missing {missing:?}, unexpected {extra:?}");
    for (k, s) in &theirs {
        assert_eq!(&ours[k], s, "{name}: shape of {k}");
    }
    let sd = theirs.iter().map(|(k, s)| (k.clone(), formula(k, s))).collect();
    let report = model.load_state_dict(&sd, true).unwrap();
    assert!(report.is_clean());
    let y = cnnkit_core::with_no_grad(|| model.forward(&input(&case.input))).unwrap();
    let err = rel_err(&y, &case.output);
    eprintln!("{name}: relative error {err:.2e}");
    assert!(err <= 1e-4, "{name}: output differs from torchvision by {err:.2e} of its scale");
}

zoo_tests!(check);

#[test]
fn every_zoo_model_has_a_fixture() {
    let cases = cases();
    for n in cnnkit_models::MODEL_NAMES.iter().filter(|n| !["simple-cnn", "cifar-cnn", "lenet5"].contains(n)) {
        assert!(cases.contains_key(*n), "{n} has no torchvision fixture");
    }
}
