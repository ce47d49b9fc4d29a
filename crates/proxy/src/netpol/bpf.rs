//! The packet rules of [`super::packet`] as eBPF programs on the host end of pods' veths.
//!
//! Why eBPF and not `tc` with flower filters: the kernels corral runs on are not
//! guaranteed to have the flower classifier or the gact action (the test machines' 6.18
//! kernel has neither: `CONFIG_NET_CLS_FLOWER` and `CONFIG_NET_ACT_GACT` are off), and
//! there is no iptables or nft binary. What every kernel since 6.6 has is tcx: eBPF
//! programs attached straight to a device's ingress or egress with the `bpf(2)` syscall,
//! no qdisc and no helper binary. So the rules are compiled here into straight-line eBPF
//! (one compare-and-return block per rule, first match wins, as the rule list reads) and
//! loaded with plain syscalls: no maps, no ELF, no libbpf, no clang.
//!
//! The program a rule list becomes:
//!
//! ```text
//!   not IPv4, or a non-first fragment           -> next (let the packet through)
//!   TCP: flags & (SYN|ACK) != SYN                -> next
//!   TCP/UDP/SCTP: the rules, in order            -> drop or next
//!   anything else                                -> next
//! ```
//!
//! "next" is tcx's TCX_NEXT: the packet goes on as if no program were there. A program is
//! named `corral_` and eight hex digits of a hash of its rules, so a restarted proxy finds
//! its programs on the devices (tcx attachments outlive the process), keeps those that are
//! already right and replaces the rest atomically (BPF_F_REPLACE).

use super::packet::{Hook, PacketRule, Verdict};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Names of corral's programs start with this.
pub const PROGRAM_PREFIX: &str = "corral_";
/// Bumped when the generated code changes, so a restarted proxy replaces old programs.
const CODE_VERSION: u32 = 1;

const TCX_NEXT: i32 = -1;
const TCX_DROP: i32 = 2;

// Instruction classes and fields (linux/bpf.h, linux/bpf_common.h).
const LDX_MEM_W: u8 = 0x61;
const LDX_MEM_H: u8 = 0x69;
const LDX_MEM_B: u8 = 0x71;
const ALU64_MOV_K: u8 = 0xb7;
const ALU64_MOV_X: u8 = 0xbf;
const ALU64_ADD_K: u8 = 0x07;
const ALU64_AND_K: u8 = 0x57;
const ALU64_LSH_K: u8 = 0x67;
const ALU32_MOV_X: u8 = 0xbc;
const ALU32_AND_K: u8 = 0x54;
/// Byte swap to big endian (on little-endian hosts: network to host order).
const ALU_END_TO_BE: u8 = 0xdc;
const JMP_JA: u8 = 0x05;
const JMP_JEQ_K: u8 = 0x15;
const JMP_JNE_K: u8 = 0x55;
const JMP_JGT_K: u8 = 0x25;
const JMP_JLT_K: u8 = 0xa5;
const JMP32_JNE_K: u8 = 0x56;
const JMP_CALL: u8 = 0x85;
const JMP_EXIT: u8 = 0x95;
const HELPER_SKB_LOAD_BYTES: i32 = 26;
/// `offsetof(struct __sk_buff, protocol)`.
const SKB_PROTOCOL: i16 = 16;

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R6: u8 = 6; // the skb
const R7: u8 = 7; // IP protocol
const R8: u8 = 8; // peer address, as loaded (network byte order in memory)
const R9: u8 = 9; // L4 offset, then destination port
const FP: u8 = 10;
/// Where the IP header (20 bytes) and the first 14 bytes of the L4 header go on the stack.
const IP_AT: i16 = -24;
const L4_AT: i16 = -40;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Insn {
    code: u8,
    dst: u8,
    src: u8,
    off: i16,
    imm: i32,
}

/// A jump target, resolved when the program is finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Label(usize);

#[derive(Default)]
struct Asm {
    insns: Vec<Insn>,
    /// (instruction index, label) of jumps to patch.
    fixups: Vec<(usize, Label)>,
    labels: Vec<Option<usize>>,
}

impl Asm {
    fn op(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
        self.insns.push(Insn {
            code,
            dst,
            src,
            off,
            imm,
        });
    }

    fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    fn bind(&mut self, l: Label) {
        self.labels[l.0] = Some(self.insns.len());
    }

    fn jump(&mut self, code: u8, dst: u8, imm: i32, to: Label) {
        self.fixups.push((self.insns.len(), to));
        self.op(code, dst, 0, 0, imm);
    }

    fn load_bytes(&mut self, offset_reg: Option<u8>, offset: i32, to: i16, len: i32) {
        self.op(ALU64_MOV_X, R1, R6, 0, 0);
        match offset_reg {
            Some(r) => self.op(ALU64_MOV_X, R2, r, 0, 0),
            None => self.op(ALU64_MOV_K, R2, 0, 0, offset),
        }
        self.op(ALU64_MOV_X, R3, FP, 0, 0);
        self.op(ALU64_ADD_K, R3, 0, 0, to as i32);
        self.op(ALU64_MOV_K, R4, 0, 0, len);
        self.op(JMP_CALL, 0, 0, 0, HELPER_SKB_LOAD_BYTES);
    }

    fn ret(&mut self, v: i32) {
        self.op(ALU64_MOV_K, R0, 0, 0, v);
        self.op(JMP_EXIT, 0, 0, 0, 0);
    }

    fn finish(mut self) -> Result<Vec<Insn>, io::Error> {
        for (at, l) in std::mem::take(&mut self.fixups) {
            let target = self.labels[l.0].expect("every label is bound");
            let off = i16::try_from(target as i64 - at as i64 - 1)
                .map_err(|_| io::Error::other("too many packet rules for one program"))?;
            self.insns[at].off = off;
        }
        Ok(self.insns)
    }
}

/// An address as a 32-bit load from packet memory reads it on this host.
fn wire_u32(octets: [u8; 4]) -> i32 {
    u32::from_ne_bytes(octets) as i32
}

fn port_range(a: &mut Asm, reg: u8, range: Option<(u16, u16)>, skip: Label) {
    let Some((lo, hi)) = range else { return };
    if lo == hi {
        a.jump(JMP_JNE_K, reg, lo as i32, skip);
        return;
    }
    if lo > 0 {
        a.jump(JMP_JLT_K, reg, lo as i32, skip);
    }
    if hi < u16::MAX {
        a.jump(JMP_JGT_K, reg, hi as i32, skip);
    }
}

/// The program for `rules` looking at packets in `hook`'s direction.
pub fn program(rules: &[PacketRule], hook: Hook) -> io::Result<Vec<u8>> {
    let mut a = Asm::default();
    let next = a.label();
    let tcp = a.label();
    let udp = a.label();
    let ports = a.label();
    a.op(ALU64_MOV_X, R6, R1, 0, 0);
    // skb->protocol holds the EtherType in network order: IPv4 only.
    a.op(LDX_MEM_W, R2, R6, SKB_PROTOCOL, 0);
    a.jump(
        JMP_JNE_K,
        R2,
        u16::from_ne_bytes(0x0800u16.to_be_bytes()) as i32,
        next,
    );
    a.load_bytes(None, 14, IP_AT, 20);
    a.jump(JMP_JNE_K, R0, 0, next);
    // Fragment offset (13 bits of bytes 6-7): non-zero means no L4 header here.
    a.op(LDX_MEM_H, R2, FP, IP_AT + 6, 0);
    a.op(
        ALU64_AND_K,
        R2,
        0,
        0,
        u16::from_ne_bytes(0x1fffu16.to_be_bytes()) as i32,
    );
    a.jump(JMP_JNE_K, R2, 0, next);
    a.op(LDX_MEM_B, R7, FP, IP_AT + 9, 0);
    let peer_at = match hook {
        Hook::ToPod => IP_AT + 12,
        Hook::FromPod => IP_AT + 16,
    };
    a.op(LDX_MEM_W, R8, FP, peer_at, 0);
    a.op(LDX_MEM_B, R9, FP, IP_AT, 0);
    a.op(ALU64_AND_K, R9, 0, 0, 0x0f);
    a.op(ALU64_LSH_K, R9, 0, 0, 2);
    a.op(ALU64_ADD_K, R9, 0, 0, 14);
    a.jump(JMP_JEQ_K, R7, 6, tcp);
    a.jump(JMP_JEQ_K, R7, 17, udp);
    a.jump(JMP_JEQ_K, R7, 132, udp);
    a.jump(JMP_JA, 0, 0, next);

    a.bind(tcp);
    a.load_bytes(Some(R9), 0, L4_AT, 14);
    a.jump(JMP_JNE_K, R0, 0, next);
    a.op(LDX_MEM_B, R2, FP, L4_AT + 13, 0);
    a.op(ALU64_AND_K, R2, 0, 0, 0x12);
    a.jump(JMP_JNE_K, R2, 0x02, next);
    a.jump(JMP_JA, 0, 0, ports);

    a.bind(udp);
    a.load_bytes(Some(R9), 0, L4_AT, 4);
    a.jump(JMP_JNE_K, R0, 0, next);

    a.bind(ports);
    a.op(LDX_MEM_H, R3, FP, L4_AT, 0);
    a.op(ALU_END_TO_BE, R3, 0, 0, 16);
    a.op(LDX_MEM_H, R9, FP, L4_AT + 2, 0);
    a.op(ALU_END_TO_BE, R9, 0, 0, 16);

    for rule in rules {
        let skip = a.label();
        let jumps = a.fixups.len();
        if let Some(proto) = rule.proto {
            a.jump(JMP_JNE_K, R7, proto as i32, skip);
        }
        if let Some(net) = rule.peer.filter(|n| n.prefix_len() > 0) {
            let want = wire_u32(net.addr().octets());
            if net.prefix_len() == 32 {
                a.jump(JMP32_JNE_K, R8, want, skip);
            } else {
                a.op(ALU32_MOV_X, R2, R8, 0, 0);
                a.op(ALU32_AND_K, R2, 0, 0, wire_u32(net.mask().octets()));
                a.jump(JMP32_JNE_K, R2, want, skip);
            }
        }
        port_range(&mut a, R9, rule.dst_ports, skip);
        port_range(&mut a, R3, rule.src_ports, skip);
        a.ret(match rule.verdict {
            Verdict::Pass => TCX_NEXT,
            Verdict::Drop => TCX_DROP,
        });
        a.bind(skip);
        if a.fixups.len() == jumps {
            // It matches everything: what follows is unreachable, which the verifier
            // refuses.
            break;
        }
    }
    a.bind(next);
    a.ret(TCX_NEXT);
    let insns = a.finish()?;
    let mut out = Vec::with_capacity(insns.len() * 8);
    for i in insns {
        out.push(i.code);
        out.push((i.src << 4) | (i.dst & 0x0f));
        out.extend_from_slice(&i.off.to_le_bytes());
        out.extend_from_slice(&i.imm.to_le_bytes());
    }
    Ok(out)
}

/// The name a program for `rules` carries: the prefix and a hash of what it does.
pub fn program_name(rules: &[PacketRule], hook: Hook) -> String {
    let text = format!("{CODE_VERSION}:{hook:?}:{rules:?}");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{PROGRAM_PREFIX}{:08x}", (h ^ (h >> 32)) as u32)
}

// ---- bpf(2) ----

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
const BPF_F_REPLACE: u32 = 1 << 2;

/// The tcx hook of the pod's host-side veth that sees `hook`'s packets: what the bridge
/// sends to the pod leaves through the veth (egress); what the pod sends arrives on it.
fn attach_type(hook: Hook) -> u32 {
    match hook {
        Hook::ToPod => BPF_TCX_EGRESS,
        Hook::FromPod => BPF_TCX_INGRESS,
    }
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a #[repr(C)] union member of `bpf_attr` for `cmd`, zero-padded
    // by its Default; the kernel reads (and for some commands writes) at most its size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_ifindex: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
    relative_fd: u32,
    expected_revision: u64,
}

#[repr(C)]
#[derive(Default)]
struct ProgQueryAttr {
    target_ifindex: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

#[repr(C)]
#[derive(Default)]
struct GetFdByIdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// A loaded program.
#[derive(Debug)]
pub struct Program {
    pub fd: OwnedFd,
    pub name: String,
}

/// Loads `code` as a tc program called `name`. When the verifier refuses it, the error
/// carries its log.
pub fn load(code: &[u8], name: &str) -> io::Result<Program> {
    let license = b"Apache-2.0\0";
    let mut prog_name = [0u8; 16];
    for (d, s) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: (code.len() / 8) as u32,
        insns: code.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name,
        ..Default::default()
    };
    match sys_bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(Program {
            // SAFETY: the kernel returned a new descriptor that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
            name: name.to_string(),
        }),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => Err(e),
        Err(e) => {
            // Load again with the verifier's log, for the error message.
            let mut log = vec![0u8; 64 * 1024];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            let _ = sys_bpf(BPF_PROG_LOAD, &mut attr);
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let tail: String = text.lines().rev().take(8).collect::<Vec<_>>().join(" | ");
            Err(io::Error::new(e.kind(), format!("{e}; verifier: {tail}")))
        }
    }
}

/// Attaches `prog` to device `ifindex` on `hook`'s side, in place of `replace` when given
/// (atomically: every packet sees the old program or the new one).
pub fn attach(
    ifindex: u32,
    hook: Hook,
    prog: &Program,
    replace: Option<&Program>,
) -> io::Result<()> {
    let mut attr = ProgAttachAttr {
        target_ifindex: ifindex,
        attach_bpf_fd: prog.fd.as_raw_fd() as u32,
        attach_type: attach_type(hook),
        ..Default::default()
    };
    if let Some(old) = replace {
        attr.attach_flags = BPF_F_REPLACE;
        attr.replace_bpf_fd = old.fd.as_raw_fd() as u32;
    }
    sys_bpf(BPF_PROG_ATTACH, &mut attr).map(|_| ())
}

pub fn detach(ifindex: u32, hook: Hook, prog: &Program) -> io::Result<()> {
    let mut attr = ProgAttachAttr {
        target_ifindex: ifindex,
        attach_bpf_fd: prog.fd.as_raw_fd() as u32,
        attach_type: attach_type(hook),
        ..Default::default()
    };
    sys_bpf(BPF_PROG_DETACH, &mut attr).map(|_| ())
}

/// corral's programs attached to `ifindex` on `hook`'s side (others' are left alone).
pub fn attached(ifindex: u32, hook: Hook) -> io::Result<Vec<Program>> {
    let mut ids = [0u32; 64];
    let mut attr = ProgQueryAttr {
        target_ifindex: ifindex,
        attach_type: attach_type(hook),
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    sys_bpf(BPF_PROG_QUERY, &mut attr)?;
    let mut out = Vec::new();
    for id in &ids[..(attr.prog_cnt as usize).min(ids.len())] {
        let mut by_id = GetFdByIdAttr {
            prog_id: *id,
            ..Default::default()
        };
        let fd = match sys_bpf(BPF_PROG_GET_FD_BY_ID, &mut by_id) {
            // SAFETY: a new descriptor from the kernel.
            Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd as i32) },
            // Detached meanwhile.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e),
        };
        let name = prog_name(&fd)?;
        if name.starts_with(PROGRAM_PREFIX) {
            out.push(Program { fd, name });
        }
    }
    Ok(out)
}

fn prog_name(fd: &OwnedFd) -> io::Result<String> {
    // struct bpf_prog_info: name[16] at offset 64; the rest is not needed.
    let mut info = [0u8; 256];
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: info.len() as u32,
        info: info.as_mut_ptr() as u64,
    };
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let name = &info[64..80];
    let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    Ok(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// Runs `prog` on one Ethernet frame in the kernel (BPF_PROG_TEST_RUN) and returns its
/// verdict: for tests.
pub fn test_run(prog: &Program, frame: &[u8]) -> io::Result<i32> {
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = TestRunAttr {
        prog_fd: prog.fd.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ..Default::default()
    };
    sys_bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(attr.retval as i32)
}

/// What a program's return value means, for tests and logs.
pub fn verdict_of(retval: i32) -> Verdict {
    if retval == TCX_DROP {
        Verdict::Drop
    } else {
        Verdict::Pass
    }
}
