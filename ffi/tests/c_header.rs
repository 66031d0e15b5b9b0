//! `ffi/include/shmflow.h` against the cdylib this crate builds, from a C compiler's side.
//!
//! A C program that includes the header (`-Wall -Wextra -Werror -std=c11`) is compiled,
//! linked against `libshmflow_ffi.so` and run. It checks at compile time that
//! - every `extern "C" fn shmflow_*` of `ffi/src` is declared with the C types its Rust
//!   signature maps to (each is assigned to a function pointer of that type, which is an
//!   incompatible-pointer error when a parameter or return type differs),
//! - `shmflow_msg` and `shmflow_arena_info` have the Rust structs' size and field offsets,
//! - the `SHMFLOW_*` constants have the Rust values;
//!
//! and at run time moves one segment with Flink metadata from a producer to a consumer
//! channel (credit, acquire, send, wait, poll, payload bytes, release, close) and reads the
//! message of a refused call. `nm -D` then checks that the header declares every exported
//! `shmflow_*` symbol and the library exports every declared one.
//!
//! Without a C compiler (`$CC` or `cc` on PATH) the test prints a skip line and passes.

use shmflow_ffi::{code, ArenaInfo, Msg, Side, KIND_CREDIT};
use std::mem::{offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The temp directory and the arena name of one run; removes both on drop, so a failed
/// assertion leaves no shared memory or files behind.
struct Scratch {
    dir: PathBuf,
    arena: String,
}

impl Scratch {
    fn new() -> Self {
        let arena = format!("shmflow-c-header-{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("{arena}.dir"));
        let scratch = Scratch { dir, arena };
        scratch.remove();
        std::fs::create_dir_all(&scratch.dir).expect("create the temp directory");
        scratch
    }

    fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(Path::new("/dev/shm").join(&self.arena));
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.remove();
    }
}

/// `name` found in a PATH directory.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// The C compiler: `$CC` (split on whitespace, e.g. `ccache gcc`) or `cc` on PATH.
fn c_compiler() -> Option<Vec<String>> {
    if let Ok(cc) = std::env::var("CC") {
        let words: Vec<String> = cc.split_whitespace().map(str::to_string).collect();
        if !words.is_empty() {
            return Some(words);
        }
    }
    on_path("cc").map(|p| vec![p.to_string_lossy().into_owned()])
}

/// The directory holding `libshmflow_ffi.so` next to this test binary (target/<profile>/deps
/// or target/<profile>); cargo builds the cdylib before the crate's integration tests.
fn cdylib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("the test binary's directory").to_path_buf();
    let candidates = [deps.clone(), deps.parent().map(Path::to_path_buf).unwrap_or_default()];
    for dir in &candidates {
        if dir.join("libshmflow_ffi.so").is_file() {
            return dir.clone();
        }
    }
    panic!("libshmflow_ffi.so is in none of {candidates:?} (is the crate-type cdylib in ffi/Cargo.toml?)");
}

/// One `extern "C" fn shmflow_*` of the Rust source: name, C parameter types, C return type.
#[derive(Debug)]
struct RustFn {
    name: String,
    params: Vec<String>,
    ret: String,
}

/// The C spelling of a Rust FFI type; `None` for a type this test does not know (then the
/// test fails and asks for the mapping, rather than checking nothing).
fn c_type(rust: &str) -> Option<String> {
    let t = rust.trim();
    if let Some(inner) = t.strip_prefix("*mut ") {
        return Some(format!("{} *", c_type(inner)?));
    }
    if let Some(inner) = t.strip_prefix("*const ") {
        return Some(format!("{} const *", c_type(inner)?));
    }
    let c = match t {
        "i32" => "int32_t",
        "u32" => "uint32_t",
        "i64" => "int64_t",
        "u64" => "uint64_t",
        "u8" => "uint8_t",
        "usize" => "size_t",
        "c_char" | "std::ffi::c_char" | "libc::c_char" => "char",
        "Msg" => "shmflow_msg",
        "ArenaInfo" => "struct shmflow_arena_info",
        _ => return None,
    };
    Some(c.to_string())
}

/// Every `extern "C" fn shmflow_*` in `src` (a Rust file's text), its types mapped to C.
fn parse_rust_fns(src: &str, file: &str) -> Vec<RustFn> {
    const MARK: &str = "extern \"C\" fn shmflow_";
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(at) = rest.find(MARK) {
        let from = &rest[at + MARK.len() - "shmflow_".len()..];
        let open = from.find('(').expect("a parameter list");
        let name = from[..open].trim().to_string();
        let close = open + from[open..].find(')').expect("the parameter list's end");
        let body = from[close..].find('{').map_or("", |b| &from[close + 1..close + b]);
        let ret = body.trim().strip_prefix("->").map_or("void".to_string(), |r| {
            c_type(r).unwrap_or_else(|| panic!("{file}: {name} returns {r:?}: add its C type to c_type()"))
        });
        let params = from[open + 1..close]
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (_, ty) = p.split_once(':').unwrap_or_else(|| panic!("{file}: {name}: parameter {p:?}"));
                c_type(ty).unwrap_or_else(|| panic!("{file}: {name} takes {ty:?}: add its C type to c_type()"))
            })
            .collect();
        out.push(RustFn { name, params, ret });
        rest = &from[close..];
    }
    out
}

fn rust_fns() -> Vec<RustFn> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&src)
        .expect("ffi/src")
        .map(|e| e.expect("ffi/src entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    let mut fns = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read a source file");
        fns.extend(parse_rust_fns(&text, &f.display().to_string()));
    }
    fns.sort_by(|a, b| a.name.cmp(&b.name));
    fns
}

/// The compile-time half: signatures, struct layouts and constants, generated from the Rust
/// side so the header cannot drift from it unnoticed.
fn static_checks(fns: &[RustFn]) -> String {
    let mut c = String::from("static void check_signatures(void) {\n");
    for f in fns {
        c += &format!(
            "    {} (*p_{name})({}) = {name};\n    (void)p_{name};\n",
            f.ret,
            if f.params.is_empty() { "void".to_string() } else { f.params.join(", ") },
            name = f.name
        );
    }
    c += "}\n";
    let mut layout = |ty: &str, size: usize, fields: &[(&str, usize, usize)]| {
        c += &format!("_Static_assert(sizeof({ty}) == {size}, \"sizeof({ty}) differs from Rust\");\n");
        for (field, off, len) in fields {
            c += &format!(
                "_Static_assert(offsetof({ty}, {field}) == {off}, \"{ty}.{field} offset differs from Rust\");\n"
            );
            c += &format!(
                "_Static_assert(sizeof((({ty} *)0)->{field}) == {len}, \"{ty}.{field} size differs from Rust\");\n"
            );
        }
    };
    macro_rules! fields {
        ($t:ty, $($f:ident: $ft:ty),*) => {
            &[$((stringify!($f), offset_of!($t, $f), size_of::<$ft>())),*]
        };
    }
    layout(
        "shmflow_msg",
        size_of::<Msg>(),
        fields!(Msg, kind: i32, segment: i32, size: i32, subpartition: i32, seq: i32, backlog: i32,
                data_type: i32, flags: i32, arg: i64),
    );
    layout(
        "struct shmflow_arena_info",
        size_of::<ArenaInfo>(),
        fields!(ArenaInfo, slot: i32, segment_size: i32, segment_count: i32, free_segments: i32,
                data: *mut u8, data_len: u64),
    );
    let consts = [
        ("SHMFLOW_EINVAL", i64::from(code::EINVAL)),
        ("SHMFLOW_EAGAIN", i64::from(code::EAGAIN)),
        ("SHMFLOW_EPEER", i64::from(code::EPEER)),
        ("SHMFLOW_EIO", i64::from(code::EIO)),
        ("SHMFLOW_EPROTO", i64::from(code::EPROTO)),
        ("SHMFLOW_EPANIC", i64::from(code::EPANIC)),
        ("SHMFLOW_ENOENT", i64::from(code::ENOENT)),
        ("SHMFLOW_ECONFIG", i64::from(code::ECONFIG)),
        ("SHMFLOW_SIDE_CONSUMER", Side::Consumer as i64),
        ("SHMFLOW_SIDE_PRODUCER", Side::Producer as i64),
        ("SHMFLOW_KIND_CREDIT", i64::from(KIND_CREDIT)),
        ("SHMFLOW_FLAG_COMPRESSED", i64::from(shmflow_ffi::core::FLAG_COMPRESSED)),
    ];
    for (name, value) in consts {
        c += &format!("_Static_assert({name} == {value}, \"{name} differs from Rust\");\n");
    }
    c
}

/// The run-time half: one segment from producer to consumer through the C API. Prints
/// `payload: <bytes>`, `error: <message>` and finally `ok`; exits 1 at the first failed check.
const PROGRAM: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond) do { if (!(cond)) { char e_[256]; shmflow_last_error(e_, sizeof e_); \
    fprintf(stderr, "line %d: %s failed (last error: %s)\n", __LINE__, #cond, e_); \
    exit(1); } } while (0)

int main(int argc, char **argv) {
    check_signatures();
    CHECK(argc == 3);
    const char *name = argv[1], *dir = argv[2];
    /* A refused call leaves a message for this thread. */
    CHECK(shmflow_arena_close(0xdead00000042u) == SHMFLOW_EINVAL);
    char err[256];
    int32_t len = shmflow_last_error(err, sizeof err);
    CHECK(len > 0 && (size_t)len == strlen(err));
    CHECK(shmflow_last_error(NULL, 0) == len);
    printf("error: %s\n", err);

    uint64_t a = 0, b = 0, prod = 0, cons = 0;
    CHECK(shmflow_arena_open(name, dir, "tm-producer", 8u << 20, 32u << 10, 10000, &a) == 0);
    CHECK(shmflow_arena_open(name, dir, "tm-consumer", 8u << 20, 32u << 10, 10000, &b) == 0);
    struct shmflow_arena_info info;
    CHECK(shmflow_arena_info(a, &info) == 0);
    CHECK(info.segment_size == 32 << 10 && info.segment_count > 1);
    CHECK(info.free_segments == info.segment_count);
    CHECK(info.data_len == (uint64_t)info.segment_size * (uint64_t)info.segment_count);
    int32_t total = info.segment_count;

    /* The consumer connects to the producer's slot; the producer's dispatcher sees it. */
    int64_t peer = -1;
    int32_t id = -1, n = 0, ids[8];
    CHECK(shmflow_peer_lookup(b, "tm-producer", &peer) == 0 && peer >= 0);
    CHECK(shmflow_channel_connect(b, peer, &cons, &id) == 0);
    CHECK(shmflow_wait(a, SHMFLOW_SIDE_PRODUCER, ids, 8, 1000, &n) == 0);
    CHECK(n == 1 && ids[0] == id);
    CHECK(shmflow_channel_accept(a, id, &prod) == 0);

    /* Credit goes consumer -> producer. */
    shmflow_msg msgs[4];
    CHECK(shmflow_add_credit(cons, 2, 1000) == 0);
    CHECK(shmflow_poll(prod, msgs, 4, &n) == 0);
    CHECK(n == 1 && msgs[0].kind == SHMFLOW_KIND_CREDIT && msgs[0].arg == 2);

    /* A segment with Flink's metadata goes producer -> consumer. */
    static const char payload[] = "hello from C";
    int32_t seg = -1;
    uint8_t *p = NULL;
    CHECK(shmflow_segment_acquire(prod, 1000, &seg) == 0 && seg >= 0 && seg < total);
    CHECK(shmflow_segment_ptr(a, seg, &p) == 0 && p == info.data + (size_t)seg * (size_t)info.segment_size);
    memcpy(p, payload, sizeof payload - 1);
    shmflow_msg m = { .kind = 7, .segment = seg, .size = (int32_t)(sizeof payload - 1),
                      .subpartition = 3, .seq = 41, .backlog = 2, .data_type = 1,
                      .flags = SHMFLOW_FLAG_COMPRESSED, .arg = -9 };
    CHECK(shmflow_send(prod, &m, 1000) == 0);
    CHECK(shmflow_wait(b, SHMFLOW_SIDE_CONSUMER, ids, 8, 1000, &n) == 0 && n == 1);
    CHECK(shmflow_poll(cons, msgs, 4, &n) == 0 && n == 1);
    CHECK(memcmp(&msgs[0], &m, sizeof m) == 0);
    uint8_t *q = NULL;
    CHECK(shmflow_segment_ptr(b, msgs[0].segment, &q) == 0);
    printf("payload: %.*s\n", (int)msgs[0].size, (const char *)q);
    uint64_t counters[4];
    CHECK(shmflow_channel_counters(cons, counters) == 0);
    CHECK(counters[0] == 1 && counters[1] == sizeof payload - 1);
    CHECK(shmflow_segment_release(cons, seg) == 0);
    CHECK(shmflow_segment_release(cons, seg) == SHMFLOW_EINVAL);

    /* Closing: the consumer first; the producer sees it. */
    int32_t st = -1;
    CHECK(shmflow_channel_status(prod, &st) == 0 && st == 0);
    CHECK(shmflow_channel_close(cons) == 0);
    CHECK(shmflow_channel_status(prod, &st) == 0 && st == 1);
    CHECK(shmflow_channel_close(prod) == 0);
    CHECK(shmflow_arena_info(a, &info) == 0 && info.free_segments == total);
    CHECK(shmflow_arena_close(b) == 0);
    CHECK(shmflow_arena_close(a) == 0);
    printf("ok\n");
    return 0;
}
"#;

/// The `shmflow_*` names the header declares (an identifier followed by `(`).
fn header_decls(header: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = header;
    while let Some(at) = rest.find("shmflow_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let preceded = at > 0 && rest[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
        if !preceded && tail[end..].trim_start().starts_with('(') {
            out.push(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    out.sort();
    out.dedup();
    out
}

/// The `shmflow_*` functions the library exports, or `None` without `nm`.
fn exported(lib: &Path) -> Option<Vec<String>> {
    let nm = on_path("nm")?;
    let out = Command::new(nm).args(["-D", "--defined-only"]).arg(lib).output().expect("run nm");
    assert!(out.status.success(), "nm failed: {}", String::from_utf8_lossy(&out.stderr));
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (kind, name) = (w.nth(1)?, w.next()?);
            (kind == "T" && name.starts_with("shmflow_")).then(|| name.to_string())
        })
        .collect();
    names.sort();
    Some(names)
}

#[test]
fn the_header_compiles_links_and_runs_against_the_cdylib() {
    let Some(cc) = c_compiler() else {
        println!("c_header: SKIPPED: no C compiler ($CC unset and no `cc` on PATH)");
        return;
    };
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("include");
    let header = std::fs::read_to_string(include.join("shmflow.h")).expect("read shmflow.h");
    let lib_dir = cdylib_dir();
    let fns = rust_fns();
    assert!(fns.len() >= 20, "parsed only {} extern \"C\" functions from ffi/src: {fns:?}", fns.len());

    // Every exported symbol is declared, and every declaration is exported.
    let declared = header_decls(&header);
    match exported(&lib_dir.join("libshmflow_ffi.so")) {
        Some(symbols) => {
            let undeclared: Vec<_> = symbols.iter().filter(|s| !declared.contains(s)).collect();
            assert!(undeclared.is_empty(), "exported but not declared in shmflow.h: {undeclared:?}");
            let missing: Vec<_> = declared.iter().filter(|d| !symbols.contains(d)).collect();
            assert!(missing.is_empty(), "declared in shmflow.h but not exported: {missing:?}");
            let parsed: Vec<_> = fns.iter().map(|f| f.name.clone()).collect();
            assert_eq!(parsed, symbols, "the Rust source's extern \"C\" functions vs the exports");
        }
        None => println!("c_header: no `nm` on PATH: export list not compared with the header"),
    }

    let scratch = Scratch::new();
    let src = scratch.dir.join("check.c");
    let exe = scratch.dir.join("check");
    let text = format!("#include \"shmflow.h\"\n{}\n{PROGRAM}", static_checks(&fns));
    std::fs::write(&src, &text).expect("write check.c");
    let out = Command::new(&cc[0])
        .args(&cc[1..])
        .args(["-Wall", "-Wextra", "-Werror", "-std=c11", "-o"])
        .arg(&exe)
        .arg("-I")
        .arg(&include)
        .arg(&src)
        .arg("-L")
        .arg(&lib_dir)
        .arg("-lshmflow_ffi")
        .output()
        .expect("run the C compiler");
    assert!(
        out.status.success(),
        "the C program did not compile against shmflow.h:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let run = Command::new(&exe)
        .arg(&scratch.arena)
        .arg(scratch.dir.join("registry"))
        .env("LD_LIBRARY_PATH", &lib_dir)
        .output()
        .expect("run the C program");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "the C program failed ({}):\n{stdout}{stderr}", run.status);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.contains(&"payload: hello from C"), "payload not read back:\n{stdout}");
    assert!(
        lines.iter().any(|l| l.starts_with("error: ") && l.contains("not a live handle")),
        "no error message for the bogus handle:\n{stdout}"
    );
    assert_eq!(lines.last(), Some(&"ok"), "{stdout}");
    assert!(!Path::new("/dev/shm").join(&scratch.arena).exists(), "closing both TaskManagers unlinks the arena");
}
