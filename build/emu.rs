//! The CUDA emulator's half of the build (csrc/emu, docs/cuda-emulator.md): every
//! kernels/NAME.cu compiled a second time, by the host C++ compiler with csrc/emu/cuda_emu.h
//! force-included, plus one C-ABI thunk per kernel and the table runtime.cpp looks names up
//! in. The kernels' names come from preprocessing each file with PONDER_EMU_SCAN defined
//! (so kernels stamped out by macros are found too). `PONDER_EMU_TSAN=1` builds the kernels
//! for ThreadSanitizer (scripts/emu-racecheck.sh): only they are instrumented, the runtime
//! tells TSan what orders the threads, and the binary links libtsan.
use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn build(root: &Path, out: &Path, sources: &[PathBuf]) {
    println!("cargo:rerun-if-env-changed=CXX");
    println!("cargo:rerun-if-env-changed=PONDER_EMU_TSAN");
    let cxx = env::var("CXX").unwrap_or_else(|_| "c++".into());
    let tsan = env::var("PONDER_EMU_TSAN").is_ok_and(|v| !v.is_empty() && v != "0");
    let emu = root.join("csrc/emu");
    let kdir = root.join("kernels");
    let base_args = |cmd: &mut Command| {
        cmd.args(["-x", "c++", "-std=c++17", "-fPIC", "-fno-strict-aliasing"])
            .arg(format!("-I{}", emu.display()))
            .arg(format!("-I{}", kdir.display()))
            .arg("-include")
            .arg(emu.join("cuda_emu.h"));
    };

    let mut table = Vec::new();
    let mut units = Vec::new();
    // The kernels, and the emulator's own test kernels (never built by nvcc).
    let selftest = emu.join("selftest.cu");
    for src in sources.iter().chain([&selftest]) {
        let stem = src.file_stem().unwrap().to_string_lossy().into_owned();
        let mut scan = Command::new(&cxx);
        base_args(&mut scan);
        scan.args(["-E", "-DPONDER_EMU_SCAN"]).arg(src);
        let text = super::run_output(&mut scan, &format!("{cxx} -E on {}", src.display()));
        let names = kernel_names(&text);
        if names.is_empty() {
            super::fail(&format!("no __global__ kernel found in {}", src.display()));
        }
        let mut unit = format!("#include {:?}\n", src.display().to_string());
        for n in &names {
            writeln!(unit, "PONDER_EMU_KERNEL({n})").unwrap();
        }
        let path = out.join(format!("emu_{stem}.cpp"));
        std::fs::write(&path, unit).unwrap_or_else(|e| super::fail(&format!("{e}")));
        units.push(path);
        table.extend(names);
    }
    let mut t = String::from("#include <stddef.h>\n");
    for n in &table {
        writeln!(t, "extern \"C\" void ponder_emu_k_{n}(void**);").unwrap();
    }
    t.push_str(
        "struct EmuKernel { const char* name; void (*thunk)(void**); };\n\
         extern \"C\" const EmuKernel ponder_emu_kernels[] = {\n",
    );
    for n in &table {
        writeln!(t, "    {{{n:?}, ponder_emu_k_{n}}},").unwrap();
    }
    writeln!(
        t,
        "}};\nextern \"C\" const size_t ponder_emu_kernel_count = {};",
        table.len()
    )
    .unwrap();
    let table_path = out.join("emu_table.cpp");
    std::fs::write(&table_path, t).unwrap_or_else(|e| super::fail(&format!("{e}")));

    // Kernel units (force-included shim), then the table and the runtime (plain C++).
    let mut jobs: Vec<(PathBuf, PathBuf, bool)> = units
        .iter()
        .map(|u| (u.clone(), u.with_extension("o"), true))
        .collect();
    jobs.push((table_path.clone(), table_path.with_extension("o"), false));
    jobs.push((emu.join("runtime.cpp"), out.join("emu_runtime.o"), false));
    jobs.push((emu.join("smem.cpp"), out.join("emu_smem.o"), false));
    super::parallel(&jobs, |(src, obj, shim)| {
        let mut cmd = Command::new(&cxx);
        if *shim {
            base_args(&mut cmd);
        } else {
            cmd.args(["-std=c++17", "-fPIC"])
                .arg(format!("-I{}", emu.display()));
        }
        if tsan {
            cmd.args(["-DPONDER_EMU_TSAN", "-g"]);
            if *shim {
                cmd.arg("-fsanitize=thread");
            }
        }
        cmd.args(["-O2", "-c", "-Wall", "-Wno-unknown-pragmas"])
            .arg(src)
            .arg("-o")
            .arg(obj);
        super::run_checked(&mut cmd, &format!("{cxx} on {}", src.display()))
    });
    let mut ar = Command::new("ar");
    ar.arg("rcs").arg(out.join("libponder_emu.a"));
    for (_, obj, _) in &jobs {
        ar.arg(obj);
    }
    if let Err(e) = super::run_checked(&mut ar, "ar") {
        super::fail(&e);
    }
    println!("cargo:rustc-link-lib=static=ponder_emu");
    if tsan {
        println!("cargo:rustc-link-lib=dylib=tsan");
    }
    println!("cargo:rustc-link-lib=dylib=stdc++");
}

/// The identifier before the first '(' after each PONDER_EMU_GLOBAL marker.
fn kernel_names(pre: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (i, _) in pre.match_indices("PONDER_EMU_GLOBAL") {
        let rest = &pre[i + "PONDER_EMU_GLOBAL".len()..];
        let Some(paren) = rest.find('(') else {
            continue;
        };
        let head = rest[..paren].trim_end();
        let name: String = head
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}
