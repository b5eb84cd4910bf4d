"""The default seccomp profile of task containers: Shoal's own generator of the policy
Docker's default profile documents (default deny; what namespaces do not isolate is
refused; some calls come back with the capability that guards them).

Root in a container must not create user namespaces, use keyrings, load BPF, or reach
the kernel's module, reboot, clock and tracing interfaces. The allow list is the
kernel's syscall table (asm/unistd_64.h) less the calls below; a syscall newer than
the profile gets ENOSYS from runc, so libcs fall back to older calls.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import platform
from typing import Any

# Everything of the x86_64 table that namespaces make safe enough, plus newer calls.
ALLOWED = """
read write open close stat fstat lstat poll lseek mmap mprotect munmap brk rt_sigaction
rt_sigprocmask rt_sigreturn ioctl pread64 pwrite64 readv writev access pipe select
sched_yield mremap msync mincore madvise shmget shmat shmctl dup dup2 pause nanosleep
getitimer alarm setitimer getpid sendfile socket connect accept sendto recvfrom sendmsg
recvmsg shutdown bind listen getsockname getpeername socketpair setsockopt getsockopt fork
vfork execve exit wait4 kill uname semget semop semctl shmdt msgget msgsnd msgrcv msgctl
fcntl flock fsync fdatasync truncate ftruncate getdents getcwd chdir fchdir rename mkdir
rmdir creat link unlink symlink readlink chmod fchmod chown fchown lchown umask gettimeofday
getrlimit getrusage sysinfo times getuid getgid setuid setgid geteuid getegid setpgid
getppid getpgrp setsid setreuid setregid getgroups setgroups setresuid getresuid setresgid
getresgid getpgid setfsuid setfsgid getsid capget capset rt_sigpending rt_sigtimedwait
rt_sigqueueinfo rt_sigsuspend sigaltstack utime mknod statfs fstatfs getpriority setpriority
sched_setparam sched_getparam sched_setscheduler sched_getscheduler sched_get_priority_max
sched_get_priority_min sched_rr_get_interval mlock munlock mlockall munlockall modify_ldt
prctl arch_prctl adjtimex setrlimit chroot sync sethostname setdomainname gettid readahead
setxattr lsetxattr fsetxattr getxattr lgetxattr fgetxattr listxattr llistxattr flistxattr
removexattr lremovexattr fremovexattr tkill time futex sched_setaffinity sched_getaffinity
set_thread_area io_setup io_destroy io_getevents io_submit io_cancel get_thread_area
epoll_create remap_file_pages getdents64 set_tid_address restart_syscall semtimedop
fadvise64 timer_create timer_settime timer_gettime timer_getoverrun timer_delete
clock_gettime clock_getres clock_nanosleep exit_group epoll_wait epoll_ctl tgkill utimes
mq_open mq_unlink mq_timedsend mq_timedreceive mq_notify mq_getsetattr waitid ioprio_set
ioprio_get inotify_init inotify_add_watch inotify_rm_watch openat mkdirat mknodat fchownat
futimesat newfstatat unlinkat renameat linkat symlinkat readlinkat fchmodat faccessat
pselect6 ppoll set_robust_list get_robust_list splice tee sync_file_range vmsplice utimensat
epoll_pwait signalfd timerfd_create eventfd fallocate timerfd_settime timerfd_gettime
accept4 signalfd4 eventfd2 epoll_create1 dup3 pipe2 inotify_init1 preadv pwritev
rt_tgsigqueueinfo recvmmsg fanotify_mark prlimit64 syncfs sendmmsg getcpu sched_setattr
sched_getattr renameat2 seccomp getrandom memfd_create execveat membarrier mlock2
copy_file_range preadv2 pwritev2 pkey_mprotect pkey_alloc pkey_free statx io_pgetevents rseq
pidfd_send_signal pidfd_open close_range openat2 faccessat2 epoll_pwait2
landlock_create_ruleset landlock_add_rule landlock_restrict_self memfd_secret
process_mrelease futex_waitv cachestat fchmodat2 map_shadow_stack futex_wake futex_wait
futex_requeue statmount listmount lsm_get_self_attr lsm_list_modules mseal setxattrat
getxattrat listxattrat removexattrat
""".split()

# The same calls under their 32-bit names (x86 and arm compat binaries).
COMPAT_32BIT = """
_llseek _newselect chown32 fchown32 fcntl64 fstat64 fstatat64 fstatfs64 ftruncate64
getegid32 geteuid32 getgid32 getgroups32 getresgid32 getresuid32 getuid32 lchown32 lstat64
mmap2 recv send sendfile64 setfsgid32 setfsuid32 setgid32 setgroups32 setregid32 setresgid32
setresuid32 setreuid32 setuid32 sigaction sigprocmask sigreturn sigsuspend signal sgetmask
ssetmask sigpending socketcall stat64 statfs64 truncate64 ugetrlimit waitpid ipc nice
clock_gettime64 clock_nanosleep_time64 clock_getres_time64 futex_time64 ppoll_time64
pselect6_time64 recvmmsg_time64 rt_sigtimedwait_time64 semtimedop_time64 timer_gettime64
timer_settime64 timerfd_gettime64 timerfd_settime64 utimensat_time64 io_pgetevents_time64
mq_timedreceive_time64 mq_timedsend_time64 sched_rr_get_interval_time64 arm_fadvise64_64
fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint cacheflush set_tls
""".split()

# Calls the kernel guards with a capability: allowed only when the task has it.
BY_CAPABILITY: dict[str, list[str]] = {
    "CAP_SYS_ADMIN": """mount umount2 pivot_root setns unshare quotactl quotactl_fd
        fanotify_init lookup_dcookie swapon swapoff open_tree move_mount fsopen fsconfig
        fsmount fspick mount_setattr bpf perf_event_open clone3 umount""".split(),
    "CAP_SYS_MODULE": "init_module finit_module delete_module".split(),
    "CAP_SYS_BOOT": "reboot kexec_load kexec_file_load".split(),
    "CAP_SYS_TIME": "settimeofday clock_settime clock_adjtime stime clock_settime64".split(),
    "CAP_SYS_PTRACE": """ptrace process_vm_readv process_vm_writev kcmp process_madvise
        pidfd_getfd userfaultfd""".split(),
    "CAP_SYS_PACCT": ["acct"],
    "CAP_SYS_RAWIO": ["iopl", "ioperm"],
    "CAP_SYS_NICE": """mbind set_mempolicy get_mempolicy move_pages migrate_pages
        set_mempolicy_home_node""".split(),
    "CAP_SYSLOG": ["syslog"],
    "CAP_SYS_TTY_CONFIG": ["vhangup"],
    "CAP_DAC_READ_SEARCH": ["open_by_handle_at", "name_to_handle_at"],
    "CAP_BPF": ["bpf"],
    "CAP_PERFMON": ["perf_event_open"],
}
# Never allowed (keyrings are not namespaced; io_uring bypasses seccomp; the rest are
# obsolete): keyctl add_key request_key io_uring_* uselib ustat sysfs _sysctl ...

# clone() flags that make namespaces; without CAP_SYS_ADMIN a clone must set none.
CLONE_NAMESPACE_FLAGS = 0x7E020000
# personality(): Linux, 32-bit Linux, UNAME26 of either, and the query value.
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

ARCHITECTURES = {
    "x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
}
# x32 calls are the x86_64 numbers with this bit set.
X32_SYSCALL_BIT = 0x40000000
X86_64_GETPID = 39


@functools.cache
def kernel_runs_x32() -> bool:
    """Whether this kernel executes x32 ABI calls at all (CONFIG_X86_X32_ABI, and Debian's
    syscall.x32 switch). Most kernels do not; anything but ENOSYS counts as yes."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(X32_SYSCALL_BIT | X86_64_GETPID) >= 0:
        return True
    return ctypes.get_errno() != errno.ENOSYS


def architectures(machine: str) -> list[str]:
    """The ABIs the filter covers. Each costs runc ~5-8 ms per container to compile
    (bench/README.md); an ABI the kernel cannot run is left out: its calls then meet
    the filter's bad-architecture action instead of the kernel's ENOSYS, and do
    nothing either way. i386 stays: IA32 binaries run on x86_64 kernels."""
    arches = ARCHITECTURES.get(machine, [])
    if machine == "x86_64" and not kernel_runs_x32():
        arches = [a for a in arches if a != "SCMP_ARCH_X32"]
    return arches


def _allow(names: list[str], args: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"names": names, "action": "SCMP_ACT_ALLOW"}
    if args:
        rule["args"] = args
    return rule


def profile(capabilities: set[str]) -> dict[str, Any]:
    """The OCI `linux.seccomp` section for a task with these capabilities."""
    rules = [_allow(ALLOWED + COMPAT_32BIT)]
    for cap, names in BY_CAPABILITY.items():
        if cap in capabilities:
            rules.append(_allow(names))
    if "CAP_SYS_ADMIN" in capabilities:
        rules.append(_allow(["clone"]))
    else:
        rules.append(
            _allow(
                ["clone"],
                [
                    {
                        "index": 0,
                        "value": CLONE_NAMESPACE_FLAGS,
                        "valueTwo": 0,
                        "op": "SCMP_CMP_MASKED_EQ",
                    }
                ],
            )
        )
        # clone3 passes its flags in memory seccomp cannot read: say "not here" so
        # the libc falls back to clone(), which is checked above.
        rules.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS})
    for value in PERSONALITIES:
        rules.append(_allow(["personality"], [{"index": 0, "value": value, "op": "SCMP_CMP_EQ"}]))
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": errno.EPERM,
        "architectures": architectures(platform.machine()),
        "syscalls": rules,
    }
