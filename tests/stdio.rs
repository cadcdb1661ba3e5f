//! Large stdin must arrive whole. ctr sends CloseIO as soon as its own stdin
//! reaches EOF, while up to a fifo's worth of data may still be unread by the
//! shim; a shim that stops copying at CloseIO loses the tail. Every case runs
//! against Keel and, as the reference, runc-v2, on containerd 1.6 and 2.x.

use keel_harness as common;

use common::*;
use std::time::Duration;

const BIG: Duration = Duration::from_secs(60);

/// `seq 1 n` as bytes.
fn seq(n: u32) -> Vec<u8> {
    (1..=n).map(|i| format!("{i}\n")).collect::<String>().into_bytes()
}

/// Random-ish but reproducible bytes, and their length and byte sum.
fn blob(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn big_stdin(line: Line, rt: &'static str) {
    let cd = Containerd::start(line);
    let root = rootfs();
    let root = root.to_str().expect("rootfs path");
    let id = cd.id("stdin");
    cd.ctr_ok(&["run", "-d", "--runtime", rt, "--rootfs", root, &id, "/bin/sleep", "1000"]);

    let lines = seq(200_000);
    for i in 0..3 {
        let exec_id = format!("awk{i}");
        let o = cd.ctr_stdin(&["task", "exec", "--exec-id", &exec_id, &id, "/bin/awk", "END{print NR, $0}"], &lines, BIG);
        assert!(o.ok(), "{rt} on {}: exec failed: {}", line.name(), o.describe());
        assert_eq!(o.out().trim(), "200000 200000", "{rt} on {}: exec {i} lost stdin", line.name());
    }

    // A slow-ish reader of binary data: every byte, in order.
    let data = blob(1_000_000);
    let want: u64 = data.iter().map(|b| *b as u64).sum();
    let o = cd.ctr_stdin(
        &[
            "task",
            "exec",
            "--exec-id",
            "sum",
            &id,
            "/bin/sh",
            "-c",
            "od -An -v -tu1 | awk '{for(i=1;i<=NF;i++){n++;s+=$i}} END{print n, s}'",
        ],
        &data,
        BIG,
    );
    assert!(o.ok(), "{rt} on {}: exec failed: {}", line.name(), o.describe());
    assert_eq!(o.out().trim(), format!("1000000 {want}"), "{rt} on {}: binary stdin altered", line.name());

    // Through `ctr run --rm` too.
    let run_id = cd.id("stdinrun");
    let o = cd.ctr_stdin(&["run", "--rm", "--runtime", rt, "--rootfs", root, &run_id, "/bin/awk", "END{print NR, $0}"], &lines, BIG);
    assert!(o.ok(), "{rt} on {}: run failed: {}", line.name(), o.describe());
    assert_eq!(o.out().trim(), "200000 200000", "{rt} on {}: run lost stdin", line.name());

    cd.ctr(&["task", "kill", "-s", "KILL", &id]);
}

mod keel {
    use super::*;
    #[test]
    fn big_stdin_containerd_1_6() {
        big_stdin(Line::V16, KEEL_V1)
    }
    #[test]
    fn big_stdin_containerd_2() {
        big_stdin(Line::V2, KEEL_V1)
    }
}

mod runc {
    use super::*;
    #[test]
    fn big_stdin_containerd_1_6() {
        big_stdin(Line::V16, RUNC_V2)
    }
    #[test]
    fn big_stdin_containerd_2() {
        big_stdin(Line::V2, RUNC_V2)
    }
}
