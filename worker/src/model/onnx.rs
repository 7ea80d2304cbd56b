//! Just enough of the ONNX protobuf schema to read a model's weights, declared by hand for `prost`
//! (no protoc, no generated code), and the importer that turns a segmentation network's ONNX file
//! into a safetensors file whose names mirror our module tree.
//!
//! Unknown fields are skipped by prost, so only the fields we read are declared. Field numbers
//! follow `onnx.proto` (ModelProto.graph = 7, GraphProto.node = 1 / initializer = 5, ...).

use std::collections::HashMap;
use std::path::Path;

use prost::Message;

use crate::model::{Arch, ConvSpec, ModelInfo};

#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct AttributeProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(int64, tag = "3")]
    pub i: i64,
    #[prost(message, optional, tag = "5")]
    pub t: Option<TensorProto>,
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(float, repeated, tag = "4")]
    pub float_data: Vec<f32>,
    /// FLOAT16 values when not in raw_data: one 16-bit pattern per int32.
    #[prost(int32, repeated, tag = "5")]
    pub int32_data: Vec<i32>,
    #[prost(string, tag = "8")]
    pub name: String,
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
}

const ONNX_FLOAT: i32 = 1;
const ONNX_FLOAT16: i32 = 10;

/// Why an ONNX file could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("not an ONNX model: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("the ONNX file has no graph")]
    NoGraph,
    #[error("sha256 of the ONNX file is {actual}, expected {expected}")]
    Checksum { expected: String, actual: String },
    #[error("the graph has {found} convolutions; {arch} has {expected}")]
    ConvCount {
        arch: Arch,
        found: usize,
        expected: usize,
    },
    #[error("convolution {index} ({name}): {what}")]
    Mismatch {
        index: usize,
        name: String,
        what: String,
    },
    #[error("tensor {0} is not stored in the file")]
    MissingTensor(String),
    #[error("tensor {name} has unsupported element type {data_type}")]
    DataType { name: String, data_type: i32 },
    #[error("writing safetensors: {0}")]
    Write(String),
}

/// One imported tensor: raw little-endian bytes in the stored dtype.
pub struct ImportedTensor {
    pub name: String,
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// Everything read out of the ONNX file for one architecture, in execution order.
pub struct Imported {
    pub tensors: Vec<ImportedTensor>,
    pub sha256: String,
}

fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

/// Conv attributes that must agree with our module tree.
fn conv_attrs(node: &NodeProto) -> (usize, usize) {
    let first = |name: &str| {
        attr(node, name)
            .and_then(|a| a.ints.first().copied())
            .unwrap_or(1) as usize
    };
    (first("dilations"), first("strides"))
}

/// The module path an exporter wrote into a node name (`/stage1/rebnconvin/conv_s1/Conv`), if any.
fn module_path(node: &NodeProto) -> Option<String> {
    let trimmed = node.name.strip_prefix('/')?;
    let (path, op) = trimmed.rsplit_once('/')?;
    (op == "Conv" && !path.is_empty()).then(|| path.replace('/', "."))
}

fn tensor_bytes(t: &TensorProto) -> Result<(safetensors::Dtype, Vec<u8>), ImportError> {
    match t.data_type {
        ONNX_FLOAT if !t.raw_data.is_empty() => Ok((safetensors::Dtype::F32, t.raw_data.clone())),
        ONNX_FLOAT => Ok((
            safetensors::Dtype::F32,
            t.float_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        )),
        ONNX_FLOAT16 if !t.raw_data.is_empty() => Ok((safetensors::Dtype::F16, t.raw_data.clone())),
        ONNX_FLOAT16 => Ok((
            safetensors::Dtype::F16,
            t.int32_data
                .iter()
                .flat_map(|v| (*v as u16).to_le_bytes())
                .collect(),
        )),
        other => Err(ImportError::DataType {
            name: t.name.clone(),
            data_type: other,
        }),
    }
}

/// Read an ONNX file of the given architecture and assign our weight names to its convolutions.
///
/// U²-Net(P) exports number their weights, so names come from execution order, checked against
/// each node's dilation, stride and weight shape; IS-Net exports carry the module path in node
/// names, which must then agree with our tree too.
pub fn import_onnx(bytes: &[u8], arch: Arch) -> Result<Imported, ImportError> {
    use sha2::Digest;
    let sha256 = hex::encode(sha2::Sha256::digest(bytes));
    let model = ModelProto::decode(bytes)?;
    let graph = model.graph.ok_or(ImportError::NoGraph)?;

    // Weights live in initializers or Constant nodes, possibly behind Cast/Identity (fp16 files).
    let mut stored: HashMap<&str, &TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let mut alias: HashMap<&str, &str> = HashMap::new();
    for node in &graph.node {
        match node.op_type.as_str() {
            "Constant" => {
                if let (Some(out), Some(t)) = (
                    node.output.first(),
                    attr(node, "value").and_then(|a| a.t.as_ref()),
                ) {
                    stored.insert(out.as_str(), t);
                }
            }
            "Cast" | "Identity" => {
                if let (Some(out), Some(inp)) = (node.output.first(), node.input.first()) {
                    alias.insert(out.as_str(), inp.as_str());
                }
            }
            _ => {}
        }
    }
    fn resolve<'a>(
        stored: &HashMap<&'a str, &'a TensorProto>,
        alias: &HashMap<&'a str, &'a str>,
        mut name: &'a str,
    ) -> Result<&'a TensorProto, ImportError> {
        while let Some(next) = alias.get(name) {
            name = next;
        }
        stored
            .get(name)
            .copied()
            .ok_or_else(|| ImportError::MissingTensor(name.to_string()))
    }

    let specs = arch.conv_specs();
    let by_name: HashMap<&str, &ConvSpec> = specs.iter().map(|s| (s.name.as_str(), s)).collect();
    let convs: Vec<&NodeProto> = graph.node.iter().filter(|n| n.op_type == "Conv").collect();
    if convs.len() != specs.len() {
        return Err(ImportError::ConvCount {
            arch,
            found: convs.len(),
            expected: specs.len(),
        });
    }

    let mut tensors = Vec::with_capacity(2 * specs.len());
    for (index, (node, in_order)) in convs.iter().zip(&specs).enumerate() {
        let spec = match module_path(node) {
            Some(path) => *by_name
                .get(path.as_str())
                .ok_or_else(|| ImportError::Mismatch {
                    index,
                    name: path.clone(),
                    what: "no such convolution in our module tree".into(),
                })?,
            None => in_order,
        };
        let mismatch = |what: String| ImportError::Mismatch {
            index,
            name: spec.name.clone(),
            what,
        };
        let (dilation, stride) = conv_attrs(node);
        if dilation != spec.dilation || stride != spec.stride {
            return Err(mismatch(format!(
                "file has dilation {dilation} stride {stride}, ours {} {}",
                spec.dilation, spec.stride
            )));
        }
        let weight = resolve(
            &stored,
            &alias,
            node.input.get(1).map_or("", String::as_str),
        )?;
        let bias = resolve(
            &stored,
            &alias,
            node.input.get(2).map_or("", String::as_str),
        )?;
        let wshape: Vec<usize> = weight.dims.iter().map(|&d| d as usize).collect();
        if wshape != spec.weight_shape() {
            return Err(mismatch(format!(
                "weight shape {wshape:?}, ours {:?}",
                spec.weight_shape()
            )));
        }
        let bshape: Vec<usize> = bias.dims.iter().map(|&d| d as usize).collect();
        if bshape != [spec.out_ch] {
            return Err(mismatch(format!("bias shape {bshape:?}")));
        }
        for (suffix, t, shape) in [("weight", weight, wshape), ("bias", bias, bshape)] {
            let (dtype, data) = tensor_bytes(t)?;
            tensors.push(ImportedTensor {
                name: format!("{}.{suffix}", spec.name),
                dtype,
                shape,
                data,
            });
        }
    }
    Ok(Imported { tensors, sha256 })
}

/// Import `onnx_path` and write `<out_dir>/<name>.safetensors` and `<out_dir>/<name>.json`.
pub fn import_file(
    onnx_path: &Path,
    arch: Arch,
    name: &str,
    out_dir: &Path,
    expected_sha256: Option<&str>,
) -> Result<ModelInfo, ImportError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| ImportError::Io { path, source }
    };
    let bytes = std::fs::read(onnx_path).map_err(io(onnx_path))?;
    let imported = import_onnx(&bytes, arch)?;
    if let Some(expected) = expected_sha256
        && !expected.eq_ignore_ascii_case(&imported.sha256)
    {
        return Err(ImportError::Checksum {
            expected: expected.to_string(),
            actual: imported.sha256,
        });
    }
    std::fs::create_dir_all(out_dir).map_err(io(out_dir))?;
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = imported
        .tensors
        .iter()
        .map(|t| {
            safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data)
                .map(|v| (t.name.clone(), v))
                .map_err(|e| ImportError::Write(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let weights = out_dir.join(format!("{name}.safetensors"));
    safetensors::serialize_to_file(views, None, &weights)
        .map_err(|e| ImportError::Write(e.to_string()))?;
    let info = ModelInfo::for_arch(arch, name, &imported.sha256);
    let json = out_dir.join(format!("{name}.json"));
    std::fs::write(
        &json,
        serde_json::to_vec_pretty(&info).expect("info serialises"),
    )
    .map_err(io(&json))?;
    Ok(info)
}
