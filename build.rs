//! Compiles kernels/*.cu with nvcc when the `cuda` feature is on and embeds the results.
//!
//! Without the feature this does nothing (a default build never needs nvcc). With it, every
//! kernels/NAME.cu becomes one fatbin holding SASS for the target (default sm_90a,
//! `CUDA_COMPUTE_CAP` overrides: 90a, 90, 80, 8.9, sm_120 …) plus PTX of the plain
//! architecture (compute_90 for 90a) so that newer GPUs can JIT it. `$OUT_DIR/kernels.rs`
//! lists them as `KERNELS: &[(&str, &[u8])]` for src/backend/cuda/. nvcc is found through
//! `NVCC`, `CUDA_HOME`/`CUDA_PATH`, `PATH`, /usr/local/cuda, or the project-local toolkit
//! that scripts/setup-cuda.sh installs under .cuda/. The same files are also compiled for the
//! CPU by the host C++ compiler, for the CUDA emulator (build/emu.rs, csrc/emu).
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

#[path = "build/emu.rs"]
mod emu;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    for v in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "CUDA_COMPUTE_CAP",
        "NVCC_FLAGS",
    ] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=build");
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let nvcc = find_nvcc(&root).unwrap_or_else(|| {
        fail(
            "the `cuda` feature needs nvcc: run `scripts/setup-cuda.sh` (installs the pinned \
             CUDA 13.0 compiler into .cuda/), or set NVCC=/path/to/nvcc or CUDA_HOME",
        )
    });
    let (sass, ptx) = arch_flags();
    let kdir = root.join("kernels");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&kdir)
        .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", kdir.display())))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    sources.sort();
    let extra: Vec<String> = env::var("NVCC_FLAGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect();

    parallel(&sources, |src| {
        let stem = src.file_stem().unwrap().to_string_lossy().into_owned();
        let dst = out.join(format!("{stem}.fatbin"));
        let mut cmd = Command::new(&nvcc);
        cmd.arg("-fatbin")
            .args(["-O3", "-lineinfo", "-std=c++17", "--expt-relaxed-constexpr"])
            .arg(format!("-I{}", kdir.display()))
            .args(["-gencode", &sass])
            .args(["-gencode", &ptx])
            .args(&extra)
            .arg("-o")
            .arg(&dst)
            .arg(src);
        run_checked(&mut cmd, &format!("nvcc on {}", src.display()))
    });

    let mut list = String::from(
        "/// Every kernels/*.cu, compiled by build.rs: (file stem, fatbin image).\n\
         pub const KERNELS: &[(&str, &[u8])] = &[\n",
    );
    for src in &sources {
        let stem = src.file_stem().unwrap().to_string_lossy();
        let path = out.join(format!("{stem}.fatbin"));
        list.push_str(&format!("    ({stem:?}, include_bytes!({:?})),\n", path));
    }
    list.push_str("];\n");
    list.push_str(&format!(
        "/// The nvcc target the images were built for.\npub const TARGET: &str = {:?};\n",
        sass
    ));
    std::fs::write(out.join("kernels.rs"), list)
        .unwrap_or_else(|e| fail(&format!("cannot write kernels.rs: {e}")));
    build_nvtx_shim(&root, &out, &nvcc);
    emu::build(&root, &out, &sources);
}

/// Runs `job` over `items` on a small work queue over the available cores; ends the build
/// with every failure's message.
fn parallel<T: Sync>(items: &[T], job: impl Fn(&T) -> Result<(), String> + Sync) {
    let next = AtomicUsize::new(0);
    let errors = Mutex::new(Vec::<String>::new());
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(items.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(item) = items.get(i) else { break };
                if let Err(e) = job(item) {
                    errors.lock().unwrap().push(e);
                }
            });
        }
    });
    let errors = errors.into_inner().unwrap();
    if !errors.is_empty() {
        fail(&errors.join("\n"));
    }
}

/// Runs `cmd`; its warnings become cargo warnings, a failure its whole output.
fn run_checked(cmd: &mut Command, what: &str) -> Result<(), String> {
    match cmd.output() {
        Ok(o) if o.status.success() => {
            for line in String::from_utf8_lossy(&o.stderr).lines() {
                if !line.trim().is_empty() {
                    println!("cargo:warning={line}");
                }
            }
            Ok(())
        }
        Ok(o) => Err(format!(
            "{what} failed ({}):\n{}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => Err(format!("cannot run {what}: {e}")),
    }
}

/// Runs `cmd` and returns its stdout, or ends the build.
fn run_output(cmd: &mut Command, what: &str) -> String {
    match cmd.output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => fail(&format!(
            "{what} failed ({}):\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => fail(&format!("cannot run {what}: {e}")),
    }
}

/// Compiles csrc/nvtx.c (NVTX ranges) with the host C compiler into a static library. The
/// NVTX 3 headers sit beside nvcc's own (`include/nvtx3`, from the nvidia-nvtx wheel or any
/// CUDA toolkit).
fn build_nvtx_shim(root: &Path, out: &Path, nvcc: &Path) {
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-env-changed=CC");
    let include = nvcc
        .parent()
        .and_then(Path::parent)
        .map(|p| p.join("include"))
        .filter(|p| p.join("nvtx3/nvToolsExt.h").is_file())
        .unwrap_or_else(|| {
            fail(&format!(
                "the NVTX 3 headers (include/nvtx3/nvToolsExt.h) are not beside {}: run \
                 scripts/setup-cuda.sh, which installs them",
                nvcc.display()
            ))
        });
    let cc = env::var("CC").unwrap_or_else(|_| "cc".into());
    let obj = out.join("nvtx.o");
    let run = |cmd: &mut Command, what: &str| match cmd.output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => fail(&format!(
            "{what} failed ({}):\n{}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => fail(&format!("cannot run {what}: {e}")),
    };
    run(
        Command::new(&cc)
            .args(["-O2", "-fPIC", "-c"])
            .arg(format!("-I{}", include.display()))
            .arg(root.join("csrc/nvtx.c"))
            .arg("-o")
            .arg(&obj),
        &format!("{cc} on csrc/nvtx.c"),
    );
    run(
        Command::new("ar")
            .arg("rcs")
            .arg(out.join("libponder_nvtx.a"))
            .arg(&obj),
        "ar",
    );
    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rustc-link-lib=static=ponder_nvtx");
    println!("cargo:rustc-link-lib=dylib=dl");
}

/// Ends the build with `msg` (nvcc's own output, verbatim, when it failed).
fn fail(msg: &str) -> ! {
    eprintln!("{msg}");
    std::process::exit(1);
}

/// `CUDA_COMPUTE_CAP` (default 90a) → (-gencode for SASS, -gencode for PTX).
fn arch_flags() -> (String, String) {
    let raw = env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90a".into());
    let cap: String = raw
        .trim()
        .trim_start_matches("sm_")
        .trim_start_matches("compute_")
        .chars()
        .filter(|c| *c != '.')
        .collect();
    let digits: String = cap.chars().take_while(|c| c.is_ascii_digit()).collect();
    let suffix = &cap[digits.len()..];
    if digits.len() < 2 || !matches!(suffix, "" | "a" | "f") {
        fail(&format!(
            "CUDA_COMPUTE_CAP={raw:?} is not a compute capability (e.g. 90a, 90, 80, 8.9)"
        ));
    }
    (
        format!("arch=compute_{cap},code=sm_{cap}"),
        format!("arch=compute_{digits},code=compute_{digits}"),
    )
}

fn find_nvcc(root: &Path) -> Option<PathBuf> {
    let is_file = |p: &Path| p.is_file().then(|| p.to_path_buf());
    if let Some(p) = env::var_os("NVCC").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    for v in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(h) = env::var_os(v).filter(|p| !p.is_empty()) {
            if let Some(p) = is_file(&PathBuf::from(h).join("bin").join("nvcc")) {
                return Some(p);
            }
        }
    }
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            if let Some(p) = is_file(&dir.join("nvcc")) {
                return Some(p);
            }
        }
    }
    is_file(Path::new("/usr/local/cuda/bin/nvcc"))
        .or_else(|| is_file(&root.join(".cuda/py/nvidia/cu13/bin/nvcc")))
}
