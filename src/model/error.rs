//! Why the engine produced no vectors for a batch (docs/ARCHITECTURE.md, "The error model"). These
//! are details for the log: the embed layer turns every one into a generic `Internal` error, so a
//! client never reads ONNX Runtime's words.

use std::path::PathBuf;

/// A tower of the model, as named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TowerName {
    Visual,
    Textual,
}

impl std::fmt::Display for TowerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TowerName::Visual => "visual",
            TowerName::Textual => "textual",
        })
    }
}

/// Why a batch failed in the engine (a tower run, or the batcher's engine thread).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error("this model has no {0} tower")]
    NoTower(TowerName),
    #[error("{0} tower has an input of the other modality")]
    WrongInput(TowerName),
    /// A row of the wrong length (`image 2 has 5 values; 150528 expected`).
    #[error("{what} {index} has {got} {unit}; {expected} expected")]
    RowLength {
        what: &'static str,
        unit: &'static str,
        index: usize,
        got: usize,
        expected: usize,
    },
    #[error("{}: cannot run token rows of {len} ids (input {input})", path.display())]
    SequenceLength {
        path: PathBuf,
        len: usize,
        input: String,
    },
    #[error("batch of {rows} rows has {elements} elements; {per_row} per row expected")]
    BatchShape {
        rows: usize,
        elements: usize,
        per_row: usize,
    },
    #[error("could not create the input tensor: {0}")]
    InputTensor(String),
    #[error("{}: inference failed: {detail}", path.display())]
    Inference { path: PathBuf, detail: String },
    #[error("output `{0}` missing from the run's results")]
    MissingOutput(String),
    #[error("output `{name}` is not a float32 tensor: {detail}")]
    OutputType { name: String, detail: String },
    #[error("output `{name}` has shape {shape:?}; expected [{rows}, {dim}]")]
    OutputShape {
        name: String,
        shape: Vec<i64>,
        rows: usize,
        dim: usize,
    },
    #[error(
        "{}: output row {row} has norm {norm}: not a usable embedding (NaN, infinite or zero values)",
        path.display()
    )]
    UnusableRow {
        path: PathBuf,
        row: usize,
        norm: f64,
    },
    #[error("{outputs} outputs for {rows} rows")]
    OutputCount { outputs: usize, rows: usize },
    #[error("the engine panicked (see the log)")]
    Panicked,
    /// An engine other than the ONNX towers (the test fakes) with its own words.
    #[error("{0}")]
    Other(String),
}

impl From<&str> for EngineError {
    fn from(reason: &str) -> Self {
        EngineError::Other(reason.to_string())
    }
}

impl From<String> for EngineError {
    fn from(reason: String) -> Self {
        EngineError::Other(reason)
    }
}

#[cfg(test)]
impl EngineError {
    /// Tests read an engine error's words as they read a string's.
    pub fn contains(&self, needle: &str) -> bool {
        self.to_string().contains(needle)
    }
}
