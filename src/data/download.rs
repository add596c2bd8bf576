//! `cnnkit data download`: fetches a dataset's files from their canonical public mirrors
//! (torchvision's list), resumes partial downloads (HTTP Range into a `.part` file), checks
//! MD5 sums, shows progress, and unpacks the CIFAR archives. The base URL can be replaced
//! (`--mirror` or CNNKIT_DATA_MIRROR) so tests can serve fixture files from 127.0.0.1.

use crate::core::{Error, Result};
use md5::{Digest, Md5};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// A dataset's files: (mirror base URL, [(file name, MD5)], whether they are archives to unpack).
type Resources = (&'static str, Vec<(&'static str, &'static str)>, bool);

fn resources(name: &str) -> Result<Resources> {
    let idx = |a, b, c, d| {
        vec![
            ("train-images-idx3-ubyte.gz", a),
            ("train-labels-idx1-ubyte.gz", b),
            ("t10k-images-idx3-ubyte.gz", c),
            ("t10k-labels-idx1-ubyte.gz", d),
        ]
    };
    Ok(match name {
        "mnist" => (
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            idx(
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "d53e105ee54ea40749a09fcbcd1e9432",
                "9fb629c4189551a2d022fa330f9573f3",
                "ec29112dd5afa0611ce80d1b7f02629c",
            ),
            false,
        ),
        "fashion-mnist" => (
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            idx(
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "25c81989df183df01b3e8a0aad5dffbe",
                "bef4ecab320f06d8554ea6380940ec79",
                "bb300cfdad3c16e7a12a480ee83cd310",
            ),
            false,
        ),
        "kmnist" => (
            "http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
            idx(
                "bdb82020997e1d708af4cf47b453dcf7",
                "e144d726b3acfaa3e44228e80efcd344",
                "5c965bf0a639b31b8f53240b1b52f4d7",
                "7320c461ea6c1c855c0b718fb2a4b134",
            ),
            false,
        ),
        "cifar10" => ("https://www.cs.toronto.edu/~kriz/", vec![("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530")], true),
        "cifar100" => ("https://www.cs.toronto.edu/~kriz/", vec![("cifar-100-binary.tar.gz", "03b5dce01913d631647c71ecec9e9cb8")], true),
        other => {
            return Err(Error::invalid(
                "data download",
                format!("unknown dataset '{other}' (mnist, fashion-mnist, kmnist, cifar10, cifar100)"),
            ))
        }
    })
}

fn file_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::File { path: path.display().to_string(), msg: msg.into() }
}

fn md5_of(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| file_err(path, format!("cannot read: {e}")))?;
    let mut h = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| file_err(path, format!("cannot read: {e}")))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Downloads `url` to `dest` through `dest.part`, resuming a partial file, then checks `md5`.
fn fetch(url: &str, dest: &Path, md5: &str, show: bool) -> Result<()> {
    let part = PathBuf::from(format!("{}.part", dest.display()));
    let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let agent = ureq::Agent::new_with_defaults();
    let mut req = agent.get(url);
    if have > 0 {
        req = req.header("Range", format!("bytes={have}-"));
    }
    let resp = req.call().map_err(|e| file_err(dest, format!("download from {url} failed: {e}")))?;
    let resumed = resp.status().as_u16() == 206;
    let remaining: Option<u64> = resp.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(&part)
        .map_err(|e| file_err(&part, format!("cannot write: {e}")))?;
    let start = if resumed { have } else { 0 };
    let pb = indicatif::ProgressBar::with_draw_target(
        remaining.map(|r| r + start),
        if show { indicatif::ProgressDrawTarget::stderr() } else { indicatif::ProgressDrawTarget::hidden() },
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}") {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    pb.set_position(start);
    let mut body = resp.into_body().into_reader();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = body.read(&mut buf).map_err(|e| file_err(dest, format!("download from {url} interrupted: {e} (run again to resume)")))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(|e| file_err(&part, format!("cannot write: {e}")))?;
        pb.inc(n as u64);
    }
    pb.finish_and_clear();
    drop(out);
    let got = md5_of(&part)?;
    if got != md5 {
        let _ = std::fs::remove_file(&part);
        return Err(file_err(dest, format!("checksum mismatch (MD5 {got}, expected {md5}); the partial file was removed, run again")));
    }
    std::fs::rename(&part, dest).map_err(|e| file_err(dest, format!("cannot rename into place: {e}")))
}

/// Downloads (and unpacks) dataset `name` into `dir`; returns the files written.
pub fn download(name: &str, dir: &Path, mirror: Option<&str>, show: bool) -> Result<Vec<PathBuf>> {
    let (base, files, archive) = resources(name)?;
    let env = std::env::var("CNNKIT_DATA_MIRROR").ok();
    let base = mirror.map(String::from).or(env).unwrap_or_else(|| base.to_string());
    download_files(&base, &files, archive, dir, show)
}

/// Fetches each (file, md5) from `base` into `dir`, skipping verified files; unpacks archives.
fn download_files(base: &str, files: &[(&str, &str)], archive: bool, dir: &Path, show: bool) -> Result<Vec<PathBuf>> {
    let base = if base.ends_with('/') { base.to_string() } else { format!("{base}/") };
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, format!("cannot create folder: {e}")))?;
    let mut done = Vec::new();
    for &(file, md5) in files {
        let dest = dir.join(file);
        if dest.exists() && md5_of(&dest)? == md5 {
            eprintln!("{} already present and verified", dest.display());
        } else {
            fetch(&format!("{base}{file}"), &dest, md5, show)?;
            eprintln!("downloaded {} (MD5 verified)", dest.display());
        }
        if archive {
            let f = std::fs::File::open(&dest).map_err(|e| file_err(&dest, format!("cannot read: {e}")))?;
            tar::Archive::new(flate2::read::GzDecoder::new(f))
                .unpack(dir)
                .map_err(|e| file_err(&dest, format!("cannot unpack archive: {e}")))?;
        }
        done.push(dest);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny HTTP/1.1 file server on 127.0.0.1 with Range support, for the download tests.
    /// Serves `files` (name → bytes) for at most `max_requests` connections, then stops.
    fn serve(files: std::collections::HashMap<String, Vec<u8>>, max_requests: usize) -> String {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(max_requests) {
                let Ok(mut s) = stream else { continue };
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                let path = line.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_string();
                let mut range_start = 0usize;
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        range_start = v.trim().trim_end_matches('-').parse().unwrap_or(0);
                    }
                }
                match files.get(&path) {
                    Some(body) if range_start > 0 && range_start < body.len() => {
                        let rest = &body[range_start..];
                        let head = format!("HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {}-{}/{}\r\nConnection: close\r\n\r\n", rest.len(), range_start, body.len() - 1, body.len());
                        let _ = s.write_all(head.as_bytes()).and_then(|_| s.write_all(rest));
                    }
                    Some(body) => {
                        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                        let _ = s.write_all(head.as_bytes()).and_then(|_| s.write_all(body));
                    }
                    None => {
                        let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    }
                }
            }
        });
        format!("http://{addr}/")
    }

    fn md5_hex(b: &[u8]) -> String {
        Md5::digest(b).iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn download_verify_resume_and_corruption() {
        let dir = std::env::temp_dir().join(format!("cnnkit-dl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let sum = md5_hex(&payload);
        let files = std::collections::HashMap::from([("a.bin".to_string(), payload.clone()), ("b.bin".to_string(), payload.clone())]);
        let url = serve(files, 6);
        // A full download verifies and lands under its own name.
        download_files(&url, &[("a.bin", &sum)], false, &dir, false).unwrap();
        assert_eq!(std::fs::read(dir.join("a.bin")).unwrap(), payload);
        // Present and verified: no request is made (the server would count it).
        download_files(&url, &[("a.bin", &sum)], false, &dir, false).unwrap();
        // A partial file is resumed with a Range request and completes correctly.
        std::fs::write(dir.join("b.bin.part"), &payload[..123_456]).unwrap();
        download_files(&url, &[("b.bin", &sum)], false, &dir, false).unwrap();
        assert_eq!(std::fs::read(dir.join("b.bin")).unwrap(), payload);
        assert!(!dir.join("b.bin.part").exists());
        // A checksum mismatch leaves no final file and no partial file, and says why.
        let e = download_files(&url, &[("c.bin", &sum)], false, &dir, false).unwrap_err().to_string();
        assert!(e.contains("404"), "{e}");
        let files = std::collections::HashMap::from([("d.bin".to_string(), b"corrupt".to_vec())]);
        let url2 = serve(files, 1);
        let e = download_files(&url2, &[("d.bin", &sum)], false, &dir, false).unwrap_err().to_string();
        assert!(e.contains("checksum mismatch") && e.contains("d.bin"), "{e}");
        assert!(!dir.join("d.bin").exists() && !dir.join("d.bin.part").exists());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn cifar_archives_are_unpacked() {
        let dir = std::env::temp_dir().join(format!("cnnkit-dl-tar-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut tarball = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        let rec = vec![3u8; 3073];
        let mut h = tar::Header::new_gnu();
        h.set_size(rec.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tarball.append_data(&mut h, "cifar-10-batches-bin/test_batch.bin", &rec[..]).unwrap();
        let gz = tarball.into_inner().unwrap().finish().unwrap();
        let sum = md5_hex(&gz);
        let url = serve(std::collections::HashMap::from([("c.tar.gz".to_string(), gz)]), 1);
        download_files(&url, &[("c.tar.gz", &sum)], true, &dir, false).unwrap();
        assert_eq!(std::fs::read(dir.join("cifar-10-batches-bin/test_batch.bin")).unwrap(), rec);
        std::fs::remove_dir_all(&dir).ok();
    }
}
