//! The seccomp profile of a sandboxed RUN step: the default profile BuildKit
//! applies whenever the kernel has seccomp (moby's default profile,
//! `github.com/moby/profiles/seccomp` v0.2.3 as BuildKit v0.29 uses it, in
//! `executor/oci/spec_linux.go` upstream). The same syscalls are allowed,
//! the rest fail with the same errno: `EPERM`, and `ENOSYS` for `clone3` so
//! a C library falls back to `clone`. Which rules apply depends on the
//! step's capabilities, the architecture and the kernel's version, decided
//! here exactly as the upstream filter decides them. An insecure step gets
//! no filter at all.

use serde::Serialize;

/// What a matching syscall gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Allow,
    Errno(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
enum Op {
    #[serde(rename = "SCMP_CMP_LT")]
    Lt,
    #[serde(rename = "SCMP_CMP_EQ")]
    Eq,
    #[serde(rename = "SCMP_CMP_GT")]
    Gt,
    /// `(arg & value) == 0`.
    #[serde(rename = "SCMP_CMP_MASKED_EQ")]
    MaskedEq,
}

/// A condition on one syscall argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Arg {
    index: u32,
    value: u64,
    op: Op,
}

/// When a rule applies: on one of `arches` (libseccomp's names, as Go's
/// `GOARCH` maps to them), with every one of `caps` in the bounding set, on
/// a kernel at least `min_kernel`. Empty parts do not restrict.
#[derive(Clone, Copy, Debug)]
struct Cond {
    arches: &'static [&'static str],
    caps: &'static [&'static str],
    min_kernel: Option<(u32, u32)>,
}

const ANY: Cond = Cond { arches: &[], caps: &[], min_kernel: None };

struct Rule {
    names: &'static [&'static str],
    action: Action,
    args: &'static [Arg],
    /// The rule is left out unless this holds.
    only: Cond,
    /// The rule is left out if any part of this holds (any arch, any cap,
    /// or the kernel version).
    unless: Cond,
}

/// The profile's rules, in the profile's order.
const RULES: &[Rule] = &[
    Rule {
        names: &[
            "accept",
            "accept4",
            "access",
            "adjtimex",
            "alarm",
            "bind",
            "brk",
            "cachestat",
            "capget",
            "capset",
            "chdir",
            "chmod",
            "chown",
            "chown32",
            "clock_adjtime",
            "clock_adjtime64",
            "clock_getres",
            "clock_getres_time64",
            "clock_gettime",
            "clock_gettime64",
            "clock_nanosleep",
            "clock_nanosleep_time64",
            "close",
            "close_range",
            "connect",
            "copy_file_range",
            "creat",
            "dup",
            "dup2",
            "dup3",
            "epoll_create",
            "epoll_create1",
            "epoll_ctl",
            "epoll_ctl_old",
            "epoll_pwait",
            "epoll_pwait2",
            "epoll_wait",
            "epoll_wait_old",
            "eventfd",
            "eventfd2",
            "execve",
            "execveat",
            "exit",
            "exit_group",
            "faccessat",
            "faccessat2",
            "fadvise64",
            "fadvise64_64",
            "fallocate",
            "fanotify_mark",
            "fchdir",
            "fchmod",
            "fchmodat",
            "fchmodat2",
            "fchown",
            "fchown32",
            "fchownat",
            "fcntl",
            "fcntl64",
            "fdatasync",
            "fgetxattr",
            "flistxattr",
            "flock",
            "fork",
            "fremovexattr",
            "fsetxattr",
            "fstat",
            "fstat64",
            "fstatat64",
            "fstatfs",
            "fstatfs64",
            "fsync",
            "ftruncate",
            "ftruncate64",
            "futex",
            "futex_requeue",
            "futex_time64",
            "futex_wait",
            "futex_waitv",
            "futex_wake",
            "futimesat",
            "getcpu",
            "getcwd",
            "getdents",
            "getdents64",
            "getegid",
            "getegid32",
            "geteuid",
            "geteuid32",
            "getgid",
            "getgid32",
            "getgroups",
            "getgroups32",
            "getitimer",
            "getpeername",
            "getpgid",
            "getpgrp",
            "getpid",
            "getppid",
            "getpriority",
            "getrandom",
            "getresgid",
            "getresgid32",
            "getresuid",
            "getresuid32",
            "getrlimit",
            "get_robust_list",
            "getrusage",
            "getsid",
            "getsockname",
            "getsockopt",
            "get_thread_area",
            "gettid",
            "gettimeofday",
            "getuid",
            "getuid32",
            "getxattr",
            "getxattrat",
            "inotify_add_watch",
            "inotify_init",
            "inotify_init1",
            "inotify_rm_watch",
            "io_cancel",
            "ioctl",
            "io_destroy",
            "io_getevents",
            "io_pgetevents",
            "io_pgetevents_time64",
            "ioprio_get",
            "ioprio_set",
            "io_setup",
            "io_submit",
            "ipc",
            "kill",
            "landlock_add_rule",
            "landlock_create_ruleset",
            "landlock_restrict_self",
            "lchown",
            "lchown32",
            "lgetxattr",
            "link",
            "linkat",
            "listen",
            "listmount",
            "listxattr",
            "listxattrat",
            "llistxattr",
            "_llseek",
            "lremovexattr",
            "lseek",
            "lsetxattr",
            "lstat",
            "lstat64",
            "madvise",
            "map_shadow_stack",
            "membarrier",
            "memfd_create",
            "memfd_secret",
            "mincore",
            "mkdir",
            "mkdirat",
            "mknod",
            "mknodat",
            "mlock",
            "mlock2",
            "mlockall",
            "mmap",
            "mmap2",
            "mprotect",
            "mq_getsetattr",
            "mq_notify",
            "mq_open",
            "mq_timedreceive",
            "mq_timedreceive_time64",
            "mq_timedsend",
            "mq_timedsend_time64",
            "mq_unlink",
            "mremap",
            "mseal",
            "msgctl",
            "msgget",
            "msgrcv",
            "msgsnd",
            "msync",
            "munlock",
            "munlockall",
            "munmap",
            "name_to_handle_at",
            "nanosleep",
            "newfstatat",
            "_newselect",
            "open",
            "openat",
            "openat2",
            "pause",
            "pidfd_open",
            "pidfd_send_signal",
            "pipe",
            "pipe2",
            "pkey_alloc",
            "pkey_free",
            "pkey_mprotect",
            "poll",
            "ppoll",
            "ppoll_time64",
            "prctl",
            "pread64",
            "preadv",
            "preadv2",
            "prlimit64",
            "process_mrelease",
            "pselect6",
            "pselect6_time64",
            "pwrite64",
            "pwritev",
            "pwritev2",
            "read",
            "readahead",
            "readlink",
            "readlinkat",
            "readv",
            "recv",
            "recvfrom",
            "recvmmsg",
            "recvmmsg_time64",
            "recvmsg",
            "remap_file_pages",
            "removexattr",
            "removexattrat",
            "rename",
            "renameat",
            "renameat2",
            "restart_syscall",
            "riscv_hwprobe",
            "rmdir",
            "rseq",
            "rt_sigaction",
            "rt_sigpending",
            "rt_sigprocmask",
            "rt_sigqueueinfo",
            "rt_sigreturn",
            "rt_sigsuspend",
            "rt_sigtimedwait",
            "rt_sigtimedwait_time64",
            "rt_tgsigqueueinfo",
            "sched_getaffinity",
            "sched_getattr",
            "sched_getparam",
            "sched_get_priority_max",
            "sched_get_priority_min",
            "sched_getscheduler",
            "sched_rr_get_interval",
            "sched_rr_get_interval_time64",
            "sched_setaffinity",
            "sched_setattr",
            "sched_setparam",
            "sched_setscheduler",
            "sched_yield",
            "seccomp",
            "select",
            "semctl",
            "semget",
            "semop",
            "semtimedop",
            "semtimedop_time64",
            "send",
            "sendfile",
            "sendfile64",
            "sendmmsg",
            "sendmsg",
            "sendto",
            "setfsgid",
            "setfsgid32",
            "setfsuid",
            "setfsuid32",
            "setgid",
            "setgid32",
            "setgroups",
            "setgroups32",
            "setitimer",
            "setpgid",
            "setpriority",
            "setregid",
            "setregid32",
            "setresgid",
            "setresgid32",
            "setresuid",
            "setresuid32",
            "setreuid",
            "setreuid32",
            "setrlimit",
            "set_robust_list",
            "setsid",
            "setsockopt",
            "set_thread_area",
            "set_tid_address",
            "setuid",
            "setuid32",
            "setxattr",
            "setxattrat",
            "shmat",
            "shmctl",
            "shmdt",
            "shmget",
            "shutdown",
            "sigaltstack",
            "signalfd",
            "signalfd4",
            "sigprocmask",
            "sigreturn",
            "socketcall",
            "socketpair",
            "splice",
            "stat",
            "stat64",
            "statfs",
            "statfs64",
            "statmount",
            "statx",
            "symlink",
            "symlinkat",
            "sync",
            "sync_file_range",
            "syncfs",
            "sysinfo",
            "tee",
            "tgkill",
            "time",
            "timer_create",
            "timer_delete",
            "timer_getoverrun",
            "timer_gettime",
            "timer_gettime64",
            "timer_settime",
            "timer_settime64",
            "timerfd_create",
            "timerfd_gettime",
            "timerfd_gettime64",
            "timerfd_settime",
            "timerfd_settime64",
            "times",
            "tkill",
            "truncate",
            "truncate64",
            "ugetrlimit",
            "umask",
            "uname",
            "unlink",
            "unlinkat",
            "uretprobe",
            "utime",
            "utimensat",
            "utimensat_time64",
            "utimes",
            "vfork",
            "vmsplice",
            "wait4",
            "waitid",
            "waitpid",
            "write",
            "writev",
        ],
        action: Action::Allow,
        args: &[],
        only: ANY,
        unless: ANY,
    },
    Rule {
        names: &["process_vm_readv", "process_vm_writev", "ptrace"],
        action: Action::Allow,
        args: &[],
        only: Cond { arches: &[], caps: &[], min_kernel: Some((4, 8)) },
        unless: ANY,
    },
    Rule {
        names: &["socket"],
        action: Action::Allow,
        args: &[Arg { index: 0, value: 38, op: Op::Lt }],
        only: ANY,
        unless: ANY,
    },
    Rule {
        names: &["socket"],
        action: Action::Allow,
        args: &[Arg { index: 0, value: 39, op: Op::Eq }],
        only: ANY,
        unless: ANY,
    },
    Rule {
        names: &["socket"],
        action: Action::Allow,
        args: &[Arg { index: 0, value: 40, op: Op::Gt }],
        only: ANY,
        unless: ANY,
    },
    Rule {
        names: &["personality"],
        action: Action::Allow,
        args: &[Arg { index: 0, value: 0, op: Op::Eq }],
        only: ANY,
        unless: ANY,
    },
    Rule {
        names: &["personality"],
        action: Action::Allow,
        args: &[Arg { index: 0, value: 8, op: Op::Eq }],
        only: ANY,
        unless: ANY,
    },
    Rule {
        names: &["personality"],
        action: Action::Allow,
        args: &[Arg { index: 0, value: 131072, op: Op::Eq }],
        only: ANY,
        unless: ANY,
    },
    Rule {
        names: &["personality"],
        action: Action::Allow,
        args: &[Arg { index: 0, value: 131080, op: Op::Eq }],
        only: ANY,
        unless: ANY,
    },
    Rule {
        names: &["personality"],
        action: Action::Allow,
        args: &[Arg { index: 0, value: 4294967295, op: Op::Eq }],
        only: ANY,
        unless: ANY,
    },
    Rule {
        names: &["sync_file_range2", "swapcontext"],
        action: Action::Allow,
        args: &[],
        only: Cond { arches: &["ppc64le"], caps: &[], min_kernel: None },
        unless: ANY,
    },
    Rule {
        names: &[
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ],
        action: Action::Allow,
        args: &[],
        only: Cond { arches: &["arm", "arm64"], caps: &[], min_kernel: None },
        unless: ANY,
    },
    Rule {
        names: &["arch_prctl"],
        action: Action::Allow,
        args: &[],
        only: Cond { arches: &["amd64", "x32"], caps: &[], min_kernel: None },
        unless: ANY,
    },
    Rule {
        names: &["modify_ldt"],
        action: Action::Allow,
        args: &[],
        only: Cond { arches: &["amd64", "x32", "x86"], caps: &[], min_kernel: None },
        unless: ANY,
    },
    Rule {
        names: &["s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"],
        action: Action::Allow,
        args: &[],
        only: Cond { arches: &["s390", "s390x"], caps: &[], min_kernel: None },
        unless: ANY,
    },
    Rule {
        names: &["riscv_flush_icache"],
        action: Action::Allow,
        args: &[],
        only: Cond { arches: &["riscv64"], caps: &[], min_kernel: None },
        unless: ANY,
    },
    Rule {
        names: &["open_by_handle_at"],
        action: Action::Allow,
        args: &[],
        only: Cond { arches: &[], caps: &["CAP_DAC_READ_SEARCH"], min_kernel: None },
        unless: ANY,
    },
    Rule {
        names: &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "lsm_get_self_attr",
            "lsm_list_modules",
            "lsm_set_self_attr",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
        action: Action::Allow,
        args: &[],
        only: Cond { arches: &[], caps: &["CAP_SYS_ADMIN"], min_kernel: None },
        unless: ANY,
    },
    Rule {
        names: &["clone"],
        action: Action::Allow,
        args: &[Arg { index: 0, value: 2114060288, op: Op::MaskedEq }],
        only: ANY,
        unless: Cond { arches: &["s390", "s390x"], caps: &["CAP_SYS_ADMIN"], min_kernel: None },
    },
    Rule {
        names: &["clone"],
        action: Action::Allow,
        args: &[Arg { index: 1, value: 2114060288, op: Op::MaskedEq }],
        only: Cond { arches: &["s390", "s390x"], caps: &[], min_kernel: None },
        unless: Cond { arches: &[], caps: &["CAP_SYS_ADMIN"], min_kernel: None },
    },
    Rule {
        names: &["clone3"],
        action: Action::Errno(38),
        args: &[],
        only: ANY,
        unless: Cond { arches: &[], caps: &["CAP_SYS_ADMIN"], min_kernel: None },
    },
    Rule {
        names: &["reboot"],
        action: Action::Allow,
        args: &[],
        only: Cond { arches: &[], caps: &["CAP_SYS_BOOT"], min_kernel: None },
        unless: ANY,
    },
    Rule {
        names: &["chroot"],
        action: Action::Allow,
        args: &[],
        only: Cond { arches: &[], caps: &["CAP_SYS_CHROOT"], min_kernel: None },
        unless: ANY,
    },
    Rule {
        names: &["delete_module", "init_module", "finit_module"],
        action: Action::Allow,
        args: &[],
        only: Cond { arches: &[], caps: &["CAP_SYS_MODULE"], min_kernel: None },
        unless: ANY,
    },
    Rule {
        names: &["acct"],
        action: Action::Allow,
        args: &[],
        only: Cond { arches: &[], caps: &["CAP_SYS_PACCT"], min_kernel: None },
        unless: ANY,
    },
    Rule {
        names: &["kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev", "ptrace"],
        action: Action::Allow,
        args: &[],
        only: Cond { arches: &[], caps: &["CAP_SYS_PTRACE"], min_kernel: None },
        unless: ANY,
    },
    Rule {
        names: &["iopl", "ioperm"],
        action: Action::Allow,
        args: &[],
        only: Cond { arches: &[], caps: &["CAP_SYS_RAWIO"], min_kernel: None },
        unless: ANY,
    },
    Rule {
        names: &["settimeofday", "stime", "clock_settime", "clock_settime64"],
        action: Action::Allow,
        args: &[],
        only: Cond { arches: &[], caps: &["CAP_SYS_TIME"], min_kernel: None },
        unless: ANY,
    },
    Rule {
        names: &["vhangup"],
        action: Action::Allow,
        args: &[],
        only: Cond { arches: &[], caps: &["CAP_SYS_TTY_CONFIG"], min_kernel: None },
        unless: ANY,
    },
    Rule {
        names: &["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"],
        action: Action::Allow,
        args: &[],
        only: Cond { arches: &[], caps: &["CAP_SYS_NICE"], min_kernel: None },
        unless: ANY,
    },
    Rule {
        names: &["syslog"],
        action: Action::Allow,
        args: &[],
        only: Cond { arches: &[], caps: &["CAP_SYSLOG"], min_kernel: None },
        unless: ANY,
    },
    Rule {
        names: &["bpf"],
        action: Action::Allow,
        args: &[],
        only: Cond { arches: &[], caps: &["CAP_BPF"], min_kernel: None },
        unless: ANY,
    },
    Rule {
        names: &["perf_event_open"],
        action: Action::Allow,
        args: &[],
        only: Cond { arches: &[], caps: &["CAP_PERFMON"], min_kernel: None },
        unless: ANY,
    },
];

/// The `linux.seccomp` of the OCI runtime config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Seccomp {
    pub default_action: &'static str,
    pub default_errno_ret: u32,
    pub architectures: Vec<&'static str>,
    pub syscalls: Vec<Syscall>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Syscall {
    pub names: Vec<&'static str>,
    pub action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<Arg>,
}

/// What the filter depends on besides the step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Platform {
    /// libseccomp's name of the architecture (`amd64`, `arm64`, ...).
    pub arch: &'static str,
    /// The running kernel's major and minor version.
    pub kernel: (u32, u32),
}

impl Platform {
    /// The machine kilnd runs on.
    pub(crate) fn host() -> Self {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        Self { arch: native_arch(std::env::consts::ARCH), kernel: kernel_version(&release) }
    }
}

/// Rust's name of an architecture as libseccomp names it.
fn native_arch(rust_arch: &str) -> &'static str {
    match rust_arch {
        "x86" => "x86",
        "x86_64" => "amd64",
        "arm" => "arm",
        "aarch64" => "arm64",
        "loongarch64" => "loongarch64",
        "mips64" => "mips64",
        "powerpc" => "ppc",
        "powerpc64" => "ppc64le",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        _ => "unknown",
    }
}

/// `6.1.0-13-amd64` → (6, 1); what does not parse counts as 0.
fn kernel_version(release: &str) -> (u32, u32) {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let mut next = || parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (next(), next())
}

/// The seccomp architectures a filter for `arch` covers: the native one and
/// the ones its processes may also run (32-bit x86 on amd64). None for an
/// architecture the profile has no entry for, as upstream.
fn architectures(arch: &str) -> Vec<&'static str> {
    match arch {
        "amd64" => vec!["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "arm64" => vec!["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        "mips64" => vec!["SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64N32"],
        "mips64n32" => vec!["SCMP_ARCH_MIPS64N32", "SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64"],
        "mipsel64" => vec!["SCMP_ARCH_MIPSEL64", "SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64N32"],
        "mips3l64n32" => vec!["SCMP_ARCH_MIPSEL64N32", "SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64"],
        "s390x" => vec!["SCMP_ARCH_S390X", "SCMP_ARCH_S390"],
        "riscv64" => vec!["SCMP_ARCH_RISCV64"],
        "loongarch64" => vec!["SCMP_ARCH_LOONGARCH64"],
        _ => Vec::new(),
    }
}

impl Rule {
    fn applies(&self, platform: &Platform, bounding: &[String]) -> bool {
        let has = |cap: &&str| bounding.iter().any(|b| b == cap);
        let unless = &self.unless;
        if unless.arches.contains(&platform.arch)
            || unless.caps.iter().any(has)
            || unless.min_kernel.is_some_and(|min| platform.kernel >= min)
        {
            return false;
        }
        let only = &self.only;
        (only.arches.is_empty() || only.arches.contains(&platform.arch))
            && only.caps.iter().all(has)
            && only.min_kernel.is_none_or(|min| platform.kernel >= min)
    }
}

/// The default profile for a step whose bounding capabilities are `bounding`.
pub(crate) fn default_profile(platform: &Platform, bounding: &[String]) -> Seccomp {
    let syscalls = RULES
        .iter()
        .filter(|rule| rule.applies(platform, bounding))
        .map(|rule| Syscall {
            names: rule.names.to_vec(),
            action: match rule.action {
                Action::Allow => "SCMP_ACT_ALLOW",
                Action::Errno(_) => "SCMP_ACT_ERRNO",
            },
            errno_ret: match rule.action {
                Action::Allow => None,
                Action::Errno(errno) => Some(errno),
            },
            args: rule.args.to_vec(),
        })
        .collect();
    Seccomp {
        default_action: "SCMP_ACT_ERRNO",
        // EPERM
        default_errno_ret: 1,
        architectures: architectures(platform.arch),
        syscalls,
    }
}

/// The kernel can filter syscalls (containerd's `seccomp.IsEnabled`).
pub(crate) fn host_supports() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| s.lines().any(|l| l.starts_with("Seccomp:")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::spec::DEFAULT_CAPABILITIES;

    fn caps(names: &[&str]) -> Vec<String> {
        names.iter().map(|c| (*c).to_owned()).collect()
    }

    fn allowed<'a>(profile: &'a Seccomp, name: &str) -> Vec<&'a Syscall> {
        profile.syscalls.iter().filter(|s| s.names.contains(&name)).collect()
    }

    const AMD64: Platform = Platform { arch: "amd64", kernel: (6, 1) };

    #[test]
    fn a_sandboxed_step_on_amd64_gets_the_upstream_selection() {
        let p = default_profile(&AMD64, &caps(&DEFAULT_CAPABILITIES));
        assert_eq!(p.default_action, "SCMP_ACT_ERRNO");
        assert_eq!(p.default_errno_ret, 1);
        assert_eq!(p.architectures, ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]);
        // The base list, ptrace (kernel 4.8+), three socket and five
        // personality rules, arch_prctl, modify_ldt, chroot (CAP_SYS_CHROOT),
        // clone without namespace flags, clone3 as ENOSYS.
        assert_eq!(p.syscalls.len(), 15, "{:#?}", p.syscalls.iter().map(|s| &s.names[0]).collect::<Vec<_>>());
        assert_eq!(p.syscalls[0].names.len(), 361);
        for blocked in ["unshare", "mount", "setns", "keyctl", "add_key", "reboot", "bpf", "swapon"] {
            assert!(allowed(&p, blocked).is_empty(), "{blocked} is allowed");
        }
        let clone = allowed(&p, "clone");
        assert_eq!(clone.len(), 1);
        assert_eq!(clone[0].args, [Arg { index: 0, value: 2114060288, op: Op::MaskedEq }]);
        let clone3 = allowed(&p, "clone3");
        assert_eq!((clone3[0].action, clone3[0].errno_ret), ("SCMP_ACT_ERRNO", Some(38)));
        assert_eq!(allowed(&p, "ptrace").len(), 1);
        assert_eq!(allowed(&p, "chroot").len(), 1);
        assert_eq!(allowed(&p, "socket").iter().map(|s| s.args[0].value).collect::<Vec<_>>(), [38, 39, 40]);
    }

    #[test]
    fn capabilities_kernel_and_arch_select_rules() {
        let admin = default_profile(&AMD64, &caps(&["CAP_SYS_ADMIN"]));
        assert_eq!(allowed(&admin, "unshare").len(), 1);
        assert_eq!(allowed(&admin, "clone").len(), 1, "unrestricted clone only");
        assert!(allowed(&admin, "clone")[0].args.is_empty());
        assert!(allowed(&admin, "clone3").iter().all(|s| s.action == "SCMP_ACT_ALLOW"));
        assert!(allowed(&admin, "chroot").is_empty(), "no CAP_SYS_CHROOT");

        let old = default_profile(&Platform { arch: "amd64", kernel: (4, 4) }, &[]);
        assert!(allowed(&old, "ptrace").is_empty());

        let arm = default_profile(&Platform { arch: "arm64", kernel: (6, 1) }, &[]);
        assert_eq!(arm.architectures, ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]);
        assert!(allowed(&arm, "arch_prctl").is_empty());
        assert_eq!(allowed(&arm, "set_tls").len(), 1);
        let s390 = default_profile(&Platform { arch: "s390x", kernel: (6, 1) }, &[]);
        assert_eq!(allowed(&s390, "clone")[0].args[0].index, 1, "s390 passes clone's flags second");
        assert!(default_profile(&Platform { arch: "ppc64le", kernel: (6, 1) }, &[]).architectures.is_empty());
    }

    #[test]
    fn the_profile_serialises_as_the_runtime_spec_has_it() {
        let p = default_profile(&AMD64, &caps(&DEFAULT_CAPABILITIES));
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["defaultErrnoRet"], 1);
        let clone3 = json["syscalls"].as_array().unwrap().iter().find(|s| s["names"][0] == "clone3").unwrap();
        assert_eq!(
            clone3,
            &serde_json::json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38})
        );
        let socket = json["syscalls"].as_array().unwrap().iter().find(|s| s["names"][0] == "socket").unwrap();
        assert_eq!(socket["args"], serde_json::json!([{"index": 0, "value": 38, "op": "SCMP_CMP_LT"}]));
    }

    #[test]
    fn kernel_versions_parse_from_release_strings() {
        assert_eq!(kernel_version("6.18.44-fc-v1272\n"), (6, 18));
        assert_eq!(kernel_version("4.8.0"), (4, 8));
        assert_eq!(kernel_version("garbage"), (0, 0));
        assert_eq!(native_arch("x86_64"), "amd64");
    }
}
