use super::*;
use half::f16;

fn f16_bytes(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_le_bytes()
}

/// Two values per byte, element j in the low nibble and element j + 16 in the high one.
fn nibbles(lo: impl Fn(u8) -> u8, hi: impl Fn(u8) -> u8) -> Vec<u8> {
    (0..16u8).map(|j| lo(j) | (hi(j) << 4)).collect()
}

#[test]
fn f32_f16_bf16() {
    let b: Vec<u8> = [1.5f32, -2.0, 1e-30]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    assert_eq!(
        dequantize_bytes(GgmlType::F32, &b, 3).unwrap(),
        [1.5, -2.0, 1e-30]
    );
    let b = [0x00, 0x3c, 0x00, 0xc0, 0x01, 0x00];
    let want = [1.0, -2.0, f16::from_bits(1).to_f32()];
    assert_eq!(dequantize_bytes(GgmlType::F16, &b, 3).unwrap(), want);
    let b = [0x80, 0x3f, 0x20, 0xc1];
    assert_eq!(
        dequantize_bytes(GgmlType::BF16, &b, 2).unwrap(),
        [1.0, -10.0]
    );
}

#[test]
fn q8_0() {
    let mut b = Vec::new();
    for d in [0.5f32, -3.0] {
        b.extend(f16_bytes(d));
        b.extend((0..32).map(|j| if j == 31 { 0x80 } else { (j as i8 - 16) as u8 }));
    }
    let out = dequantize_bytes(GgmlType::Q8_0, &b, 64).unwrap();
    for (blk, d) in [0.5f32, -3.0].into_iter().enumerate() {
        for j in 0..32 {
            let q = if j == 31 { -128.0 } else { j as f32 - 16.0 };
            assert_eq!(out[blk * 32 + j], q * d, "block {blk} element {j}");
        }
    }
}

#[test]
fn q4_0() {
    let mut b = f16_bytes(2.0).to_vec();
    b.extend(nibbles(|j| j, |j| 15 - j));
    let out = dequantize_bytes(GgmlType::Q4_0, &b, 32).unwrap();
    for j in 0..16 {
        assert_eq!(out[j], (j as f32 - 8.0) * 2.0);
        assert_eq!(out[j + 16], (7.0 - j as f32) * 2.0);
    }
}

#[test]
fn q4_1() {
    let mut b = Vec::new();
    for (d, m) in [(0.25f32, -1.0f32), (0.1, 0.3)] {
        b.extend(f16_bytes(d));
        b.extend(f16_bytes(m));
        b.extend(nibbles(|j| j, |j| (j * 3) % 16));
    }
    let out = dequantize_bytes(GgmlType::Q4_1, &b, 64).unwrap();
    for (blk, (d, m)) in [(0.25f32, -1.0f32), (0.1, 0.3)].into_iter().enumerate() {
        // ggml rounds d and m to f16 when storing them, then computes q * d + m in f32.
        let (d, m) = (f16::from_f32(d).to_f32(), f16::from_f32(m).to_f32());
        for j in 0..16 {
            assert_eq!(out[blk * 32 + j], j as f32 * d + m);
            assert_eq!(out[blk * 32 + 16 + j], ((j * 3) % 16) as f32 * d + m);
        }
    }
}

#[test]
fn unsupported_type_and_bad_length() {
    let e = dequantize_bytes(GgmlType(14), &[0; 210], 256).unwrap_err();
    assert!(e.to_string().contains("Q6_K"), "{e}");
    let e = dequantize_bytes(GgmlType::Q8_0, &[0; 33], 32).unwrap_err();
    assert!(e.to_string().contains("33 bytes"), "{e}");
    assert!(dequantize_bytes(GgmlType::Q4_1, &[0; 20], 31).is_err());
}

/// A GGUF v3 image: u32 "general.alignment" 64, a string array, one Q8_0 tensor.
fn sample_file() -> Vec<u8> {
    let s = |v: &mut Vec<u8>, x: &str| {
        v.extend((x.len() as u64).to_le_bytes());
        v.extend(x.as_bytes());
    };
    let mut v = b"GGUF".to_vec();
    v.extend(3u32.to_le_bytes());
    v.extend(1u64.to_le_bytes());
    v.extend(3u64.to_le_bytes());
    s(&mut v, "general.alignment");
    v.extend(4u32.to_le_bytes());
    v.extend(64u32.to_le_bytes());
    s(&mut v, "a.list");
    v.extend(9u32.to_le_bytes());
    v.extend(8u32.to_le_bytes());
    v.extend(2u64.to_le_bytes());
    s(&mut v, "x");
    s(&mut v, "yz");
    s(&mut v, "a.flag");
    v.extend(7u32.to_le_bytes());
    v.push(1);
    s(&mut v, "t");
    v.extend(2u32.to_le_bytes());
    v.extend(32u64.to_le_bytes());
    v.extend(2u64.to_le_bytes());
    v.extend(8u32.to_le_bytes());
    v.extend(0u64.to_le_bytes());
    v.resize(v.len().div_ceil(64) * 64, 0);
    for d in [1.0f32, 2.0] {
        v.extend(f16_bytes(d));
        v.extend(0..32u8);
    }
    v
}

fn write_temp(name: &str, bytes: &[u8]) -> PathBuf {
    let p = std::env::temp_dir().join(format!("ponder-gguf-{}-{name}.gguf", std::process::id()));
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn parses_metadata_and_tensors() {
    let p = write_temp("sample", &sample_file());
    let g = GgufFile::open(&p).unwrap();
    std::fs::remove_file(&p).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.alignment, 64);
    assert_eq!(g.data_start % 64, 0);
    assert_eq!(g.get("a.flag"), Some(&GgufValue::Bool(true)));
    let list = g.get("a.list").and_then(|v| v.as_array()).unwrap();
    assert_eq!(
        list.iter().map(|v| v.as_str().unwrap()).collect::<Vec<_>>(),
        ["x", "yz"]
    );
    let t = g.tensor("t").unwrap();
    assert_eq!(
        (t.dims.clone(), t.shape(), t.n_bytes),
        (vec![32, 2], vec![2, 32], 68)
    );
    let out = g.dequantize(t).unwrap();
    assert_eq!(out[33], 2.0);
    assert_eq!(out[63], 62.0);
}

/// Every truncation of a valid file is an error, and no corruption of a byte panics.
#[test]
fn truncated_and_corrupted_files_never_panic() {
    let good = sample_file();
    let p = write_temp("trunc", &good);
    for n in 0..good.len() {
        std::fs::write(&p, &good[..n]).unwrap();
        let e = GgufFile::open(&p)
            .err()
            .unwrap_or_else(|| panic!("prefix of {n} bytes opened"));
        let msg = format!("{e:#}");
        assert!(!msg.contains('\n'), "{msg}");
        assert!(msg.contains("truncated") || n < 8, "prefix {n}: {msg}");
    }
    for i in 0..good.len() {
        for x in [0x00u8, 0xff, 0x7f, 0x80] {
            let mut bad = good.clone();
            bad[i] ^= x;
            std::fs::write(&p, &bad).unwrap();
            if let Ok(g) = GgufFile::open(&p) {
                for t in &g.tensors {
                    let _ = g.dequantize(t);
                }
            }
        }
    }
    std::fs::remove_file(&p).unwrap();
}

/// A count that the file's size allows but no checkpoint has is refused before anything is
/// allocated for it: the in-memory values are many times larger than their bytes in the file.
#[test]
fn counts_beyond_any_checkpoint_are_refused() {
    let header = |n_tensors: u64, n_kv: u64| {
        let mut v = b"GGUF".to_vec();
        v.extend(3u32.to_le_bytes());
        v.extend(n_tensors.to_le_bytes());
        v.extend(n_kv.to_le_bytes());
        v
    };
    let sparse = |name: &str, bytes: &[u8], len: u64| {
        let p = write_temp(name, bytes);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(len)
            .unwrap();
        p
    };
    let mut array = header(0, 1);
    let key = "tokenizer.ggml.token_type";
    array.extend((key.len() as u64).to_le_bytes());
    array.extend(key.as_bytes());
    array.extend(9u32.to_le_bytes());
    array.extend(0u32.to_le_bytes());
    let n = MAX_ARRAY_ELEMENTS + 1;
    array.extend(n.to_le_bytes());
    let len = array.len() as u64 + n;
    let p = sparse("many-elements", &array, len);
    let e = format!("{:#}", GgufFile::open(&p).err().unwrap());
    std::fs::remove_file(&p).unwrap();
    assert!(e.contains("corrupt") && e.contains(key), "{e}");

    let n = MAX_TENSORS + 1;
    let p = sparse("many-tensors", &header(n, 0), 24 + 24 * n);
    let e = format!("{:#}", GgufFile::open(&p).err().unwrap());
    std::fs::remove_file(&p).unwrap();
    assert!(e.contains("corrupt") && e.contains("tensors"), "{e}");
}
