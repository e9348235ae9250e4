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
    let frame: *const usize;
    // SAFETY: reads the frame pointer register only.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::asm!("mov {}, rbp", out(reg) frame, options(nomem, nostack));
    }
    // SAFETY: reads the frame pointer register only.
    #[cfg(target_arch = "aarch64")]
    unsafe {
        std::arch::asm!("mov {}, x29", out(reg) frame, options(nomem, nostack));
    }
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
    // A second call is served from the cache: the same lines, shared.
    let again = resolve_all(ips);
    for ip in ips {
        assert!(Arc::ptr_eq(&all[&ip], &again[&ip]), "{ip:#x}");
    }
    let (entries, bytes) = cached();
    assert!(entries >= ips.len() && entries <= CAPACITY);
    assert!(bytes <= MAX_BYTES);
}
