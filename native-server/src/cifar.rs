//! CIFAR-10/100 test images in the binary layout (a label byte, then 3x32x32 planar bytes).

use std::path::{Path, PathBuf};

use blindsight_core::layout::LayoutError;

use crate::model::{Model, Shape};

/// One record: label and planar CHW pixels.
pub struct Record {
    pub label: usize,
    pub pixels: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum CifarError {
    #[error("reading {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {len} bytes is not a whole number of {record}-byte records")]
    Size {
        path: PathBuf,
        len: usize,
        record: usize,
    },
    #[error("the model's input is {found}, but CIFAR images are {CHANNELS}x{SIDE}x{SIDE}")]
    ModelInput { found: Shape },
    #[error("normalizing a CIFAR image: {0}")]
    Normalize(LayoutError),
}

/// Channels of a CIFAR image.
pub const CHANNELS: usize = 3;
/// Height and width of a CIFAR image.
pub const SIDE: usize = 32;
/// Bytes of one CIFAR-10 record.
pub const RECORD: usize = 1 + CHANNELS * SIDE * SIDE;

/// The shape of a CIFAR image.
pub const SHAPE: Shape = Shape::Map {
    channels: CHANNELS,
    height: SIDE,
    width: SIDE,
};

/// Checks that `model` takes CIFAR images as they are: 3x32x32, no resizing.
pub fn check_model(model: &Model) -> Result<(), CifarError> {
    match model.input_shape() {
        SHAPE => Ok(()),
        found => Err(CifarError::ModelInput { found }),
    }
}

impl Record {
    /// The record's pixels as `model`'s normalized CHW input; the model must take 3x32x32 inputs.
    pub fn model_input(&self, model: &Model) -> Result<Vec<f64>, CifarError> {
        check_model(model)?;
        let input = model.input();
        model
            .normalization()
            .normalize_chw(&self.pixels, input.height, input.width)
            .map_err(CifarError::Normalize)
    }
}

/// Reads up to `count` records starting at record `skip`.
pub fn read(path: &Path, skip: usize, count: usize) -> Result<Vec<Record>, CifarError> {
    let bytes = std::fs::read(path).map_err(|error| CifarError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    if bytes.len() % RECORD != 0 {
        return Err(CifarError::Size {
            path: path.to_path_buf(),
            len: bytes.len(),
            record: RECORD,
        });
    }
    Ok(bytes
        .chunks_exact(RECORD)
        .skip(skip)
        .take(count)
        .map(|r| Record {
            label: r[0] as usize,
            pixels: r[1..].to_vec(),
        })
        .collect())
}

/// The test batch of a CIFAR-10 directory: `jpeg75/test_batch.bin` or, for `exact`,
/// `exact_prefix/test_batch.first1017.bin` (true pixels).
pub fn test_batch(dir: &Path, exact: bool) -> PathBuf {
    if exact {
        dir.join("exact_prefix").join("test_batch.first1017.bin")
    } else {
        dir.join("jpeg75").join("test_batch.bin")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_split_and_bad_sizes_refused() {
        let dir = std::env::temp_dir().join(format!("blindsight-cifar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("b.bin");
        let mut bytes = vec![0u8; 3 * RECORD];
        for (i, rec) in bytes.chunks_exact_mut(RECORD).enumerate() {
            rec[0] = i as u8 + 3;
            rec[1] = 100 + i as u8;
        }
        std::fs::write(&path, &bytes).unwrap();
        let recs = read(&path, 1, 5).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!((recs[0].label, recs[0].pixels[0]), (4, 101));
        assert_eq!(recs[1].pixels.len(), 3072);
        std::fs::write(&path, &bytes[..RECORD + 7]).unwrap();
        assert!(matches!(read(&path, 0, 1), Err(CifarError::Size { .. })));
        assert!(matches!(
            read(&dir.join("missing.bin"), 0, 1),
            Err(CifarError::Io { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn records_become_model_inputs_only_for_3x32x32_models() {
        let model = Model::embedded().unwrap();
        let record = Record {
            label: 0,
            pixels: (0..RECORD - 1).map(|i| i as u8).collect(),
        };
        let input = record.model_input(&model).unwrap();
        assert_eq!(input.len(), RECORD - 1);
        let want = model
            .normalization()
            .normalize_chw(&record.pixels, SIDE, SIDE)
            .unwrap();
        assert_eq!(input, want);

        let (manifest, tensors) = crate::model::tests::tiny();
        let tiny = crate::model::tests::load(&manifest, &tensors).unwrap();
        let err = record.model_input(&tiny).unwrap_err();
        assert!(
            matches!(err, CifarError::ModelInput { found } if found == tiny.input_shape()),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "the model's input is 2x4x4, but CIFAR images are 3x32x32"
        );
    }
}
