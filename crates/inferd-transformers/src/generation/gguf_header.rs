//! A GGUF file's header, read and checked against the file before anything is allocated from
//! it. Model files come from the internet (the hub, KServe's `storageUri`): a declared size
//! that is never checked becomes an allocation the process cannot survive (an allocation
//! failure aborts; it is not a panic the registry can catch), so every tensor's declared extent
//! must lie inside the file, and a header the parser cannot read is an error, never a panic.

use std::fs::File;
use std::path::Path;

use candle_core::quantized::gguf_file;

use crate::error::LoadError;

/// Reads and checks the header of the GGUF file `file` (at `path`, for errors).
pub fn read(file: &mut File, path: &Path) -> Result<gguf_file::Content, LoadError> {
    let length = file.metadata().map_err(|source| LoadError::Io { path: path.to_path_buf(), source })?.len();
    // The parser checks lengths against the file, but divides by the declared alignment
    // unchecked; a panic here is a malformed header like any other.
    let content = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| gguf_file::Content::read(file)))
        .map_err(|_| LoadError::invalid(path, "malformed GGUF header"))?
        .map_err(|err| LoadError::invalid(path, err.to_string()))?;
    check_tensors(&content, length, path)?;
    Ok(content)
}

/// Every tensor's element count, block layout and byte range, against the file's `length`.
fn check_tensors(content: &gguf_file::Content, length: u64, path: &Path) -> Result<(), LoadError> {
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let info = &content.tensor_infos[name];
        let invalid = |reason: String| Err(LoadError::invalid(path, format!("tensor {name}: {reason}")));
        let dims = info.shape.dims();
        let Some(elements) = dims.iter().try_fold(1u64, |product, &dim| product.checked_mul(dim as u64)) else {
            return invalid(format!("shape {dims:?} has more elements than a file can hold"));
        };
        // An empty weight is never valid, and candle would view its empty buffer as blocks
        // through a dangling pointer.
        if elements == 0 {
            return invalid(format!("shape {dims:?} has no elements"));
        }
        let block = info.ggml_dtype.block_size() as u64;
        let columns = dims.last().copied().unwrap_or(1) as u64;
        if !columns.is_multiple_of(block) {
            return invalid(format!("rows of {columns} values do not fill {:?} blocks of {block}", info.ggml_dtype));
        }
        let bytes = (elements / block).checked_mul(info.ggml_dtype.type_size() as u64);
        let start = content.tensor_data_offset.checked_add(info.offset);
        match (start, bytes) {
            (Some(start), Some(bytes)) if start.checked_add(bytes).is_some_and(|end| end <= length) => {}
            _ => {
                return invalid(format!(
                    "shape {dims:?} in {:?} at offset {} runs past the end of the file ({length} bytes)",
                    info.ggml_dtype, info.offset
                ));
            }
        }
    }
    Ok(())
}
