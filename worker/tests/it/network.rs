//! Shape tests with random weights, and weight-name conformance between what the networks ask
//! for and what the importer writes.

use std::collections::BTreeMap;

use backless_worker::model::{Arch, ModelInfo, Network};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{VarBuilder, VarMap};

/// Names and shapes a network asks its VarBuilder for.
fn requested(arch: Arch) -> (Network, BTreeMap<String, Vec<usize>>) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let net = Network::new(arch, vb).expect("network builds");
    let names = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();
    (net, names)
}

/// Names and shapes our architecture description (which the importer assigns) lists.
fn described(arch: Arch) -> BTreeMap<String, Vec<usize>> {
    arch.conv_specs()
        .into_iter()
        .flat_map(|s| {
            [
                (format!("{}.weight", s.name), s.weight_shape()),
                (format!("{}.bias", s.name), vec![s.out_ch]),
            ]
        })
        .collect()
}

#[test]
fn conv_counts_match_the_checkpoints() {
    assert_eq!(Arch::U2netp.conv_specs().len(), 119);
    assert_eq!(Arch::U2net.conv_specs().len(), 119);
    // IS-Net: conv_in + the same 112 stage convs + 6 sides; 238 tensors.
    assert_eq!(described(Arch::Isnet).len(), 238);
}

#[test]
fn networks_ask_for_exactly_the_described_weights() {
    for arch in Arch::ALL {
        let (_, asked) = requested(arch);
        assert_eq!(asked, described(arch), "{arch}");
    }
}

#[test]
fn imported_weights_match_what_the_network_asks_for() {
    for arch in Arch::ALL {
        if !crate::weights_present(arch.name()) {
            continue;
        }
        let path = crate::models_dir().join(format!("{arch}.safetensors"));
        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let written: BTreeMap<String, Vec<usize>> = st
            .tensors()
            .into_iter()
            .map(|(k, v)| (k, v.shape().to_vec()))
            .collect();
        let (_, asked) = requested(arch);
        assert_eq!(written, asked, "{arch}");
        let info: ModelInfo = serde_json::from_slice(
            &std::fs::read(crate::models_dir().join(format!("{arch}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(info.arch, arch);
    }
}

#[test]
fn random_weights_give_a_probability_map_of_the_input_size() {
    // Odd sizes exercise ceil-mode pooling and upsampling back to every skip's size.
    for (arch, h, w) in [
        (Arch::U2netp, 57, 83),
        (Arch::U2netp, 64, 64),
        (Arch::U2net, 45, 38),
        (Arch::Isnet, 66, 50),
    ] {
        let (net, _) = requested(arch);
        let x = Tensor::randn(0f32, 1., (1, 3, h, w), &Device::Cpu).unwrap();
        let y = net.forward(&x).unwrap();
        assert_eq!(y.dims(), &[1, 1, h, w], "{arch}");
        let v = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|p| (0.0..=1.0).contains(p)), "{arch}");
    }
}
