//! Unpacking hostile and ordinary archives: every refusal names its entry and leaves
//! nothing outside the destination.

use super::*;

fn tar_gz(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    build(&mut builder);
    let tar = builder.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    gz.finish().unwrap()
}

fn file(builder: &mut tar::Builder<Vec<u8>>, name: &[u8], body: &[u8]) {
    let mut header = tar::Header::new_old();
    // Write the raw name so hostile paths are not normalised away by the builder.
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.set_size(body.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    builder.append(&header, body).unwrap();
}

fn link(builder: &mut tar::Builder<Vec<u8>>, name: &str, target: &str) {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_size(0);
    builder.append_link(&mut header, name, target).unwrap();
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shoal-archive-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn packs_and_unpacks_a_tree() {
    let src = scratch("src");
    std::fs::create_dir_all(src.join("lib")).unwrap();
    std::fs::write(src.join("index.js"), "x").unwrap();
    std::fs::write(src.join("lib/a.js"), "y").unwrap();
    std::fs::create_dir_all(src.join(".git")).unwrap();
    std::fs::write(src.join(".git/HEAD"), "z").unwrap();
    let bytes = pack_dir(&src).unwrap();
    let dest = scratch("dest");
    unpack(&bytes, &dest).unwrap();
    assert_eq!(std::fs::read_to_string(dest.join("lib/a.js")).unwrap(), "y");
    assert!(!dest.join(".git").exists());
    let _ = std::fs::remove_dir_all(&src);
    let _ = std::fs::remove_dir_all(&dest);
}

#[test]
fn hostile_archives_are_refused_with_the_entry_named() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot",
            tar_gz(|b| file(b, b"../evil.js", b"x")),
            "../evil.js",
        ),
        (
            "absolute",
            tar_gz(|b| file(b, b"/tmp/evil.js", b"x")),
            "/tmp/evil.js",
        ),
        (
            "symlink",
            tar_gz(|b| link(b, "escape", "../../etc")),
            "symlink points outside",
        ),
        (
            "abs-symlink",
            tar_gz(|b| link(b, "escape", "/etc/passwd")),
            "symlink points outside",
        ),
        ("not-gzip", b"plain text".to_vec(), "not a readable tar.gz"),
    ];
    for (name, bytes, expected) in cases {
        let dest = scratch(name);
        let err = unpack(&bytes, &dest).unwrap_err().to_string();
        assert!(err.contains(expected), "{name}: {err}");
        let escaped = dest.parent().unwrap().join("evil.js");
        assert!(!escaped.exists(), "{name} wrote outside");
        let _ = std::fs::remove_dir_all(&dest);
    }
}

#[test]
fn internal_symlinks_are_kept() {
    let bytes = tar_gz(|b| {
        file(b, b"lib/real.js", b"x");
        link(b, "lib/alias.js", "real.js");
        // As npm lays out `node_modules/.bin`.
        file(b, b"node_modules/tool/cli.js", b"cli");
        link(b, "node_modules/.bin/tool", "../tool/cli.js");
        // Through another link, staying inside.
        link(b, "lib2", "lib");
        link(b, "via.js", "lib2/alias.js");
    });
    let dest = scratch("internal-link");
    unpack(&bytes, &dest).unwrap();
    let read = |rel: &str| std::fs::read_to_string(dest.join(rel)).unwrap();
    assert_eq!(read("lib/alias.js"), "x");
    assert_eq!(read("node_modules/.bin/tool"), "cli");
    assert_eq!(read("via.js"), "x");
    let _ = std::fs::remove_dir_all(&dest);
}

#[test]
fn entry_and_byte_caps_hold() {
    let many = tar_gz(|b| {
        for i in 0..=MAX_ENTRIES {
            file(b, format!("f{i}").as_bytes(), b"");
        }
    });
    let dest = scratch("many");
    assert!(matches!(
        unpack(&many, &dest),
        Err(ArchiveError::TooManyEntries)
    ));
    let _ = std::fs::remove_dir_all(&dest);

    let path = |depth: usize| format!("{}f.js", "d/".repeat(depth - 1));
    let mut header = tar::Header::new_gnu();
    header.set_size(0);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    let deepest = tar_gz(|b| {
        b.append_data(&mut header.clone(), path(MAX_DEPTH), std::io::empty())
            .unwrap()
    });
    let too_deep = tar_gz(|b| {
        b.append_data(&mut header, path(MAX_DEPTH + 1), std::io::empty())
            .unwrap()
    });
    let dest = scratch("deep");
    unpack(&deepest, &dest).unwrap();
    let _ = std::fs::remove_dir_all(&dest);
    let dest = scratch("too-deep");
    let (_, reason) = bad_entry(unpack(&too_deep, &dest));
    assert!(reason.contains("more than 128 levels deep"), "{reason}");
    let _ = std::fs::remove_dir_all(&dest);
}

/// `<temp>/shoal-archive-<name>-<pid>/dest`, empty, and the folder around it: whatever an
/// archive manages to write outside `dest` lands in the jail, where a test can see it.
fn jailed(name: &str) -> (PathBuf, PathBuf) {
    let jail = scratch(name);
    let dest = jail.join("dest");
    std::fs::create_dir(&dest).unwrap();
    (jail, dest)
}

/// Everything in `jail` besides `dest`: what an archive wrote outside its destination.
fn outside(jail: &Path) -> Vec<String> {
    std::fs::read_dir(jail)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != "dest")
        .collect()
}

fn bad_entry(result: Result<(), ArchiveError>) -> (String, String) {
    match result {
        Err(ArchiveError::BadEntry { entry, reason }) => (entry, reason),
        other => panic!("expected a refused entry, got {other:?}"),
    }
}

#[test]
fn a_chain_of_symlinks_cannot_carry_an_entry_outside() {
    // `a/l1` leads to the top of the tree and `a/l1/l2` would be created through it, as
    // `l2 -> ..` at the top: the folder around the destination. Each link on its own
    // stays inside; followed while unpacking, the file below them landed outside.
    let bytes = tar_gz(|b| {
        file(b, b"index.js", b"x");
        link(b, "a/l1", "..");
        link(b, "a/l1/l2", "..");
        file(b, b"a/l1/l2/escaped.js", b"evil");
    });
    let (jail, dest) = jailed("chain");
    let (entry, reason) = bad_entry(unpack(&bytes, &dest));
    assert_eq!(entry, "a/l1/l2");
    assert!(reason.contains("symlink a/l1"), "{reason}");
    assert_eq!(outside(&jail), Vec::<String>::new(), "wrote outside dest");
    assert!(
        !dest.join("l2").exists(),
        "nothing created through the link"
    );
    let _ = std::fs::remove_dir_all(&jail);
}

#[test]
fn a_file_entry_never_writes_through_a_symlink() {
    // Over a link inside the tree: the link's target must keep its contents.
    let bytes = tar_gz(|b| {
        file(b, b"lib/real.js", b"original");
        link(b, "alias.js", "lib/real.js");
        file(b, b"alias.js", b"evil");
    });
    let (jail, dest) = jailed("over-link");
    let (entry, reason) = bad_entry(unpack(&bytes, &dest));
    assert_eq!(entry, "alias.js");
    assert!(reason.contains("symlink"), "{reason}");
    assert_eq!(
        std::fs::read_to_string(dest.join("lib/real.js")).unwrap(),
        "original"
    );
    let _ = std::fs::remove_dir_all(&jail);

    // Over a link that leads out through another link: nothing may appear outside.
    let bytes = tar_gz(|b| {
        link(b, "a/up", "..");
        link(b, "esc", "a/up/../escaped.js");
        file(b, b"esc", b"evil");
    });
    let (jail, dest) = jailed("over-escaping-link");
    let (entry, _) = bad_entry(unpack(&bytes, &dest));
    assert_eq!(entry, "esc");
    assert_eq!(outside(&jail), Vec::<String>::new(), "wrote outside dest");
    let _ = std::fs::remove_dir_all(&jail);

    // A folder entry over a link is refused the same way.
    let bytes = tar_gz(|b| {
        file(b, b"lib/real.js", b"x");
        link(b, "d", "lib");
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_size(0);
        header.set_mode(0o755);
        b.append_data(&mut header, "d", std::io::empty()).unwrap();
    });
    let (jail, dest) = jailed("dir-over-link");
    let (entry, reason) = bad_entry(unpack(&bytes, &dest));
    assert_eq!(entry, "d");
    assert!(reason.contains("symlink"), "{reason}");
    let _ = std::fs::remove_dir_all(&jail);
}

#[test]
fn a_symlink_leading_out_through_other_symlinks_is_refused() {
    // `out` stays inside on paper (`a/b/up/../escaped.js` is `a/b/escaped.js`), but
    // `a/b/up` leads to the top, so the kernel would take `..` from there: outside.
    // Either order of the two links is refused, since a later link can change where an
    // earlier one leads.
    let up_first = tar_gz(|b| {
        link(b, "a/b/up", "../..");
        link(b, "out", "a/b/up/../escaped.js");
    });
    let out_first = tar_gz(|b| {
        link(b, "out", "a/b/up/../escaped.js");
        link(b, "a/b/up", "../..");
    });
    for (name, bytes) in [("up-first", up_first), ("out-first", out_first)] {
        let (jail, dest) = jailed(name);
        let (entry, reason) = bad_entry(unpack(&bytes, &dest));
        assert_eq!(entry, "out", "{name}");
        assert!(reason.contains("outside"), "{name}: {reason}");
        let _ = std::fs::remove_dir_all(&jail);
    }

    // A loop, and a target that makes the check walk far: refused, not resolved forever.
    let looped = tar_gz(|b| {
        link(b, "ping", "pong");
        link(b, "pong", "ping");
    });
    let long_way = format!("{}x.js", "d/../".repeat(200));
    let far = tar_gz(|b| {
        file(b, b"d/keep.js", b"x");
        link(b, "far", &long_way);
    });
    for (name, bytes, expected) in [
        ("loop", looped, "more than 40 symlinks"),
        ("far", far, "more than 256 steps"),
    ] {
        let (jail, dest) = jailed(name);
        let (_, reason) = bad_entry(unpack(&bytes, &dest));
        assert!(reason.contains(expected), "{name}: {reason}");
        let _ = std::fs::remove_dir_all(&jail);
    }
}

#[test]
fn modes_come_from_the_unpacker_not_the_archive() {
    let bytes = tar_gz(|b| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_size(0);
        header.set_mode(0o777);
        b.append_data(&mut header, "open", std::io::empty())
            .unwrap();
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(1);
        header.set_mode(0o4777);
        b.append_data(&mut header, "open/run", &b"x"[..]).unwrap();
        file(b, b"deep/er/plain.js", b"x");
    });
    let (jail, dest) = jailed("modes");
    unpack(&bytes, &dest).unwrap();
    let mode = |rel: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::symlink_metadata(dest.join(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("open"), 0o755);
    assert_eq!(
        mode("open/run"),
        0o555,
        "executable, never setuid or writable"
    );
    assert_eq!(mode("deep"), 0o755, "a folder made for a file's path");
    assert_eq!(mode("deep/er"), 0o755);
    assert_eq!(mode("deep/er/plain.js"), 0o444);
    let _ = std::fs::remove_dir_all(&jail);
}

/// A file with holes, as a fresh `cargo build --release` binary often is: 1 MiB with data
/// only at its start and end.
fn sparse_file(path: &Path) -> Vec<u8> {
    use std::io::{Seek, SeekFrom, Write};
    let mut file = std::fs::File::create(path).unwrap();
    file.write_all(b"#!start").unwrap();
    file.seek(SeekFrom::Start(1024 * 1024 - 4)).unwrap();
    file.write_all(b"end\n").unwrap();
    drop(file);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::read(path).unwrap()
}

#[test]
fn sparse_files_pack_plain_and_gnu_sparse_entries_unpack_whole() {
    let src = scratch("sparse-src");
    let contents = sparse_file(&src.join("bootstrap"));

    // Another tool's archive with a GNU sparse entry (tar's builder writes one where the
    // file system reports holes) unpacks to the whole file, executable bit kept.
    let archive = tar_gz(|b| {
        b.sparse(true);
        b.append_path_with_name(src.join("bootstrap"), "bootstrap")
            .unwrap();
    });
    let entry_type = {
        let gz = flate2::read::GzDecoder::new(&archive[..]);
        let mut tar = tar::Archive::new(gz);
        let first = tar.entries().unwrap().next().unwrap().unwrap();
        first.header().entry_type()
    };
    let dest = scratch("sparse-dest");
    unpack(&archive, &dest).unwrap();
    assert_eq!(std::fs::read(dest.join("bootstrap")).unwrap(), contents);
    let mode = std::fs::metadata(dest.join("bootstrap"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o555);
    if !entry_type.is_gnu_sparse() {
        eprintln!("this file system reported no holes: the entry was {entry_type:?}");
    }

    // Shoal's own packing writes a plain entry.
    let packed = pack_dir(&src).unwrap();
    let gz = flate2::read::GzDecoder::new(&packed[..]);
    let mut tar = tar::Archive::new(gz);
    for entry in tar.entries().unwrap() {
        let entry = entry.unwrap();
        assert!(!entry.header().entry_type().is_gnu_sparse());
    }
    let dest = scratch("sparse-packed");
    unpack(&packed, &dest).unwrap();
    assert_eq!(std::fs::read(dest.join("bootstrap")).unwrap(), contents);
    for dir in ["sparse-src", "sparse-dest", "sparse-packed"] {
        let _ = std::fs::remove_dir_all(scratch(dir));
    }
}
