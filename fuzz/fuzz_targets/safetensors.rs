//! A safetensors file (or a shard index naming one) as the loader reads it: any bytes give a
//! store or an error, and every tensor the header declares can be looked up and widened.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qwenrt::weights::WeightStore;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("qwenrt-fuzz-safetensors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The first byte picks what the input is: a weights file, or an index beside a fixed shard.
    let (kind, body) = data.split_first().unwrap_or((&0, &[]));
    let _ = std::fs::remove_file(dir.join("model.safetensors.index.json"));
    if kind % 2 == 0 {
        std::fs::write(dir.join("model.safetensors"), body).unwrap();
    } else {
        std::fs::write(dir.join("model.safetensors.index.json"), body).unwrap();
    }
    let Ok(store) = WeightStore::open_dir(&dir) else { return };
    for info in store.tensor_infos() {
        if let Ok(tensor) = store.get(&info.name, &info.shape) {
            // Widening reads every element: the header's offsets must have been checked.
            if tensor.bytes.len() <= 1 << 20 {
                let _ = tensor.to_finite_f32();
            }
        }
    }
});
