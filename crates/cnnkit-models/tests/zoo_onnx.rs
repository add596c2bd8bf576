//! Every zoo architecture as torch.onnx.export writes it (tests/fixtures/zoo/onnx, made by
//! tools/gen_zoo_fixtures.py with the parameters as named graph inputs) runs in cnnkit's ONNX
//! importer and gives torchvision's output with the formula weights (≤ 1e-4 of its scale).

mod common;
use cnnkit_core::Tensor;
use common::*;

fn check(name: &str) {
    let cases = cases();
    let case = &cases[name];
    let graph = cnnkit_onnx::load_onnx(std::path::Path::new(&format!("{FIXTURES}/onnx/{name}.onnx"))).unwrap();
    let mut feeds: Vec<(String, Tensor)> = vec![("x".into(), input(&case.input))];
    let shapes: std::collections::BTreeMap<_, _> = case.keys.iter().cloned().collect();
    for inp in graph.inputs.iter().filter(|i| i.name != "x") {
        let shape = shapes.get(&inp.name).unwrap_or_else(|| panic!("{name}: graph input {} is not a state_dict key", inp.name));
        feeds.push((inp.name.clone(), formula(&inp.name, shape)));
    }
    let refs: Vec<(&str, Tensor)> = feeds.iter().map(|(k, t)| (k.as_str(), t.clone())).collect();
    let y = graph.run(&refs).unwrap().remove(0);
    let err = rel_err(&y, &case.output);
    eprintln!("{name}: relative error {err:.2e}");
    assert!(err <= 1e-4, "{name}: ONNX run differs from torchvision by {err:.2e}");
}

zoo_tests!(check);
