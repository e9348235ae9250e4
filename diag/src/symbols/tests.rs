use super::*;

const FUNCTION_LINE: u32 = line!() + 2;
#[inline(never)]
fn a_function_of_the_program() -> usize {
    a_function_of_the_program as *const () as usize
}

/// The address this function returns to: a code address inside its caller, read from
/// the caller's frame (the workspace builds with frame pointers).
#[inline(never)]
fn return_address() -> usize {
    // This function's own frame record, read after its prologue (`crate::fp`).
    let frame = crate::fp::frame_pointer() as *const usize;
    // SAFETY: with frame pointers, the word above the saved frame pointer is the return
    // address.
    unsafe { *frame.add(1) }
}

/// Inlined into its caller even without optimisation: its code, and the call to
/// `return_address` inside it, become part of `calls_an_inlined_function`.
#[inline(always)]
fn an_inlined_function() -> usize {
    std::hint::black_box(return_address())
}

const INLINED_CALL_LINE: u32 = line!() - 3;

#[inline(never)]
fn calls_an_inlined_function() -> usize {
    an_inlined_function()
}

const OUTER_CALL_LINE: u32 = line!() - 3;

#[test]
fn program_addresses_get_their_full_symtab_name_file_and_line() {
    let ip = a_function_of_the_program() + 1;
    let lines = resolve(ip);
    let outer = lines.last().expect("a line");
    assert_eq!(
        outer.function, "diag::symbols::tests::a_function_of_the_program",
        "{lines:?}"
    );
    assert!(outer.file.ends_with("src/symbols/tests.rs"), "{lines:?}");
    assert_eq!(outer.line, FUNCTION_LINE, "{lines:?}");
}

#[test]
fn an_inlined_call_is_an_extra_line_of_the_same_address() {
    let ip = calls_an_inlined_function();
    let lines = resolve(ip);
    assert_eq!(lines.len(), 2, "{lines:?}");
    // Innermost first: the inlined function at the line of its call to
    // `return_address`, then the function it was inlined into at the line calling it.
    assert!(
        lines[0].function.ends_with("an_inlined_function"),
        "{lines:?}"
    );
    assert!(lines[0].file.ends_with("src/symbols/tests.rs"), "{lines:?}");
    assert_eq!(lines[0].line, INLINED_CALL_LINE, "{lines:?}");
    assert_eq!(
        lines[1].function, "diag::symbols::tests::calls_an_inlined_function",
        "{lines:?}"
    );
    assert!(lines[1].file.ends_with("src/symbols/tests.rs"), "{lines:?}");
    assert_eq!(lines[1].line, OUTER_CALL_LINE, "{lines:?}");
}

#[test]
fn library_addresses_get_their_name_from_the_loader() {
    let getpid = libc::getpid as *const () as usize;
    let lines = resolve(getpid + 1);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].function.contains("getpid"), "{lines:?}");
    assert_eq!((lines[0].file.as_str(), lines[0].line), ("", 0));
}

#[test]
fn unknown_addresses_get_their_hex() {
    let heap = Box::new(7u64);
    let on_heap = &*heap as *const u64 as usize;
    for ip in [0, 1, on_heap] {
        let lines = resolve(ip);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0].function, format!("{ip:#x}"));
        assert_eq!((lines[0].file.as_str(), lines[0].line), ("", 0));
    }
}

#[test]
fn a_batch_resolves_as_each_address_alone_and_fills_the_cache() {
    let ips = [
        a_function_of_the_program() + 1,
        calls_an_inlined_function(),
        libc::getpid as *const () as usize + 1,
        1,
    ];
    let all = resolve_all(ips);
    for ip in ips {
        assert_eq!(all[&ip], resolve(ip), "{ip:#x}");
    }
    // A second call is served from the cache: the same lines, shared. An address nobody
    // knows, outside the program, is not cached (made-up addresses must not push real
    // ones out): it is looked up again.
    let again = resolve_all(ips);
    for ip in &ips[..3] {
        assert!(Arc::ptr_eq(&all[ip], &again[ip]), "{ip:#x}");
    }
    assert!(!Arc::ptr_eq(&all[&1], &again[&1]));
    assert_eq!(all[&1], again[&1]);
    let (entries, bytes) = cached();
    assert!((3..=CAPACITY).contains(&entries), "{entries}");
    assert!(bytes <= MAX_BYTES);
}

#[test]
fn compressed_debug_sections_give_the_same_frames() {
    let exe = std::env::current_exe().expect("exe");
    let copy = std::env::temp_dir().join(format!("diag-zdebug-{}", std::process::id()));
    let status = std::process::Command::new("objcopy")
        .arg("--compress-debug-sections=zlib")
        .arg(&exe)
        .arg(&copy)
        .status()
        .expect("objcopy (binutils) runs");
    assert!(status.success());
    let read = |path: &std::path::Path| std::fs::read(path).expect("read");
    let (plain, zlib) = (read(&exe), read(&copy));
    let _ = std::fs::remove_file(&copy);
    let plain = object::File::parse(&plain[..]).expect("ELF");
    let zlib = object::File::parse(&zlib[..]).expect("ELF");
    let section = object::Object::section_by_name(&zlib, ".debug_info").expect("debug info");
    let compressed = object::ObjectSection::compressed_data(&section).expect("section");
    assert_eq!(compressed.format, object::CompressionFormat::Zlib);
    let program = loader::program().expect("program");
    let mut addrs: Vec<u64> = [
        a_function_of_the_program() as u64,
        calls_an_inlined_function() as u64 - 1,
    ]
    .iter()
    .map(|a| a - program.bias as u64)
    .collect();
    addrs.sort_unstable();
    let want = dwarf::frames(&plain, &addrs).expect("frames");
    assert!(want.iter().all(|f| !f.is_empty()), "{want:?}");
    assert_eq!(dwarf::frames(&zlib, &addrs).expect("frames"), want);
}

/// Files and lines, inlined frames included, against binutils' `addr2line -i` on this
/// test binary, at addresses spread over its code.
#[test]
fn lines_agree_with_binutils_addr2line() {
    let program = loader::program().expect("program");
    let exe = std::env::current_exe().expect("exe");
    let file = std::fs::read(&exe).expect("read");
    let elf = object::File::parse(&file[..]).expect("ELF");
    // About 150 function symbols spread over the table, 16 bytes in (inside the body).
    let mut funcs: Vec<(u64, u64)> = object::Object::symbols(&elf)
        .filter(|s| object::ObjectSymbol::kind(s) == object::SymbolKind::Text)
        .map(|s| {
            (
                object::ObjectSymbol::address(&s),
                object::ObjectSymbol::size(&s),
            )
        })
        .filter(|(_, size)| *size > 32)
        .collect();
    funcs.sort_unstable();
    funcs.dedup();
    let step = (funcs.len() / 150).max(1);
    let addrs: Vec<u64> = funcs.iter().step_by(step).map(|(a, _)| a + 16).collect();
    assert!(addrs.len() > 100, "{} addresses", addrs.len());
    let ours: Vec<Resolved> = {
        let ips: Vec<usize> = addrs
            .iter()
            .map(|a| *a as usize + program.bias + 1)
            .collect();
        resolve_uncached(&ips)
    };
    let out = std::process::Command::new("addr2line")
        .arg("-i")
        .arg("-a")
        .arg("-e")
        .arg(&exe)
        .args(addrs.iter().map(|a| format!("{a:#x}")))
        .output()
        .expect("addr2line (binutils) runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    // With -a each address starts a block: "0x…" then one "file:line" per frame.
    let mut theirs: Vec<Vec<String>> = Vec::new();
    for line in text.lines() {
        if line.starts_with("0x") {
            theirs.push(Vec::new());
        } else if let Some(block) = theirs.last_mut() {
            // "file:line" or "file:line (discriminator n)"; the line is "?" or 0 when
            // unknown (compiler-made code), and then the file may be the unit's name.
            let at = line.split(" (").next().unwrap_or(line);
            block.push(if at.ends_with(":?") || at.ends_with(":0") {
                "?".to_owned()
            } else {
                at.to_owned()
            });
        }
    }
    assert_eq!(theirs.len(), addrs.len());
    let mut agree = 0;
    for (k, (ours, theirs)) in ours.iter().zip(&theirs).enumerate() {
        let ours: Vec<String> = ours
            .iter()
            .map(|l| match l.line {
                0 => "?".to_owned(),
                n => format!("{}:{n}", l.file),
            })
            .collect();
        if &ours == theirs {
            agree += 1;
        } else {
            eprintln!("{:#x}: ours {ours:?}, addr2line {theirs:?}", addrs[k]);
        }
    }
    eprintln!("{agree} of {} addresses agree", addrs.len());
    assert!(
        agree * 100 >= addrs.len() * 98,
        "{agree} of {}",
        addrs.len()
    );
}
