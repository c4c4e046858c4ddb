/*
 * hedgerow-gate UID GID DIR EXITFILE PROGRAM [ARG...]
 *
 * The first program of every lifecycle step that the agent (root) starts as another
 * user; it takes the place of `setpriv --reuid --regid --clear-groups`:
 *
 *   1. wait for one byte on fd 3, the gate (a pipe). The agent writes it once this
 *      process is in its cgroup, so nothing of the step runs, or forks, outside it.
 *      EOF (the agent could not place it and gave up on it), or no pipe: exit 125;
 *   2. close the gate and every other descriptor above stderr; make DIR, the
 *      component's work folder, unless it exists (its parent is the agent's), make
 *      it UID:GID's, mode 0700, and enter it;
 *   3. with EXITFILE "-", go on in this process; else fork: this process stays root,
 *      waits for the step and, when it ends, writes its exit code (128 + signal for
 *      a signal) to EXITFILE — a new file (O_EXCL, never through a link) in a folder
 *      only root can write — and exits with that code. The agent reads it for a step
 *      it adopted after a restart (it is not that step's parent then): the code is
 *      what the kernel said, not what the component wrote, and the component cannot
 *      signal this root process nor touch the file;
 *   4. drop the supplementary groups, then set the real, effective and saved gid,
 *      then uid (no way back to root; exec clears the capabilities);
 *   5. exec PROGRAM with ARGs and the environment as given.
 *
 * Exit codes like a shell's: 125 gate closed, 126 work folder or privileges not
 * set up, 127 usage or exec failure; a one-line reason goes to stderr (the
 * component's log). Making the folder here, after the gate, keeps a costly mkdir
 * (0.1-0.6 ms of CPU on ext4 here) out of the agent's pass: the steps of a batch
 * make theirs in parallel, while the agent reports.
 *
 * Why a program of our own: on these machines starting a process costs ~0.7 ms of CPU
 * and setpriv another ~1.3 ms (dynamic loading, libcap-ng reading /proc), paid 50
 * times when a deployment starts 50 components while the agent works through them.
 * Built freestanding where the system calls below are written out (x86_64), it adds
 * nothing measurable to the exec it precedes; elsewhere it is an ordinary static
 * program. The agent falls back to setpriv when it is not built (see process.py).
 */

#if defined(__x86_64__) && !defined(HEDGEROW_GATE_HOSTED)
#define FREESTANDING 1
enum { NR_read = 0, NR_write = 1, NR_open = 2, NR_close = 3, NR_fork = 57,
       NR_execve = 59, NR_exit = 60, NR_wait4 = 61, NR_fchdir = 81, NR_mkdir = 83,
       NR_fchmod = 91, NR_fchown = 93, NR_setgroups = 116, NR_setresuid = 117,
       NR_setresgid = 119, NR_close_range = 436 };
enum { O_RDONLY = 0, O_WRONLY = 1, O_CREAT = 0100, O_EXCL = 0200, O_NOFOLLOW = 0400000,
       O_DIRECTORY = 0200000, O_CLOEXEC = 02000000 };

static long sys3(long n, long a, long b, long c) {
    long r;
    register long r10 __asm__("r10") = 0;  /* wait4's rusage: none */
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10)
                     : "rcx", "r11", "memory");
    return r;  /* -errno on failure */
}

static int is_pipe(long fd) {  /* x86_64 struct stat: st_mode is the u32 at byte 24 */
    unsigned long st[18];
    return sys3(5 /* fstat */, fd, (long)st, 0) == 0 &&
           (((unsigned int *)st)[6] & 0170000) == 0010000;
}
#else
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
enum { NR_read, NR_write, NR_open, NR_close, NR_fork, NR_execve, NR_exit, NR_wait4,
       NR_fchdir, NR_mkdir, NR_fchmod, NR_fchown, NR_setgroups, NR_setresuid,
       NR_setresgid, NR_close_range };

static long sys3(long n, long a, long b, long c) {
    long r = 0;
    switch (n) {
    case NR_read: r = read((int)a, (void *)b, (size_t)c); break;
    case NR_write: r = write((int)a, (const void *)b, (size_t)c); break;
    case NR_open: r = open((const char *)a, (int)b, (mode_t)c); break;
    case NR_close: r = close((int)a); break;
    case NR_fork: r = fork(); break;
    case NR_wait4: r = waitpid((pid_t)a, (int *)b, (int)c); break;
    case NR_fchdir: r = fchdir((int)a); break;
    case NR_mkdir: r = mkdir((const char *)a, (mode_t)b); break;
    case NR_fchmod: r = fchmod((int)a, (mode_t)b); break;
    case NR_fchown: r = fchown((int)a, (uid_t)b, (gid_t)c); break;
    case NR_execve: r = execve((const char *)a, (char *const *)b, (char *const *)c); break;
    case NR_exit: _exit((int)a);
    case NR_setgroups: r = setgroups((size_t)a, (const gid_t *)b); break;
    case NR_setresuid: r = setresuid((uid_t)a, (uid_t)b, (uid_t)c); break;
    case NR_setresgid: r = setresgid((gid_t)a, (gid_t)b, (gid_t)c); break;
#ifdef SYS_close_range
    case NR_close_range: r = syscall(SYS_close_range, (unsigned)a, (unsigned)b, (int)c); break;
#else
    case NR_close_range: errno = ENOSYS; r = -1; break;
#endif
    }
    return r < 0 ? -errno : r;
}

static int is_pipe(long fd) {
    struct stat st;
    return fstat((int)fd, &st) == 0 && S_ISFIFO(st.st_mode);
}
#endif

static void say(const char *what, long err) {
    char line[160];  /* prefix 15 + message <= 120 + ": errno " 8 + digits <= 8 + '\n' */
    int n = 0;
    const char *p = "hedgerow-gate: ";
    while (*p) line[n++] = *p++;
    while (*what && n < 135) line[n++] = *what++;
    if (err < 0) {  /* the errno, as a number: no strerror without a libc */
        char digits[8];
        int d = 0;
        unsigned long e = (unsigned long)-err;
        line[n++] = ':'; line[n++] = ' '; line[n++] = 'e'; line[n++] = 'r';
        line[n++] = 'r'; line[n++] = 'n'; line[n++] = 'o'; line[n++] = ' ';
        do { digits[d++] = (char)('0' + e % 10); e /= 10; } while (e && d < 8);
        while (d) line[n++] = digits[--d];
    }
    line[n++] = '\n';
    sys3(NR_write, 2, (long)line, n);
}

static __attribute__((noreturn)) void leave(int code) {
    for (;;) sys3(NR_exit, code, 0, 0);
}

/* A decimal id below 2^32 - 1 (-1 means "unchanged" to the kernel: refused). */
static long id_of(const char *s) {
    unsigned long v = 0;
    if (!*s) return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') return -1;
        v = v * 10 + (unsigned long)(*s - '0');
        if (v >= 0xffffffffUL) return -1;
    }
    return (long)v;
}

/* Make `dir` (0700) unless it exists, give it to uid:gid and enter it; it is opened
   without following a link, so what is changed is the folder itself. */
static long enter(const char *dir, long uid, long gid) {
    long fd, err = sys3(NR_mkdir, (long)dir, 0700, 0);
    if (err < 0 && err != -17) return err;  /* EEXIST: a restart, or an earlier step */
    fd = sys3(NR_open, (long)dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0);
    if (fd < 0) return fd;
    if ((err = sys3(NR_fchown, fd, uid, gid)) >= 0 &&
        (err = sys3(NR_fchmod, fd, 0700, 0)) >= 0)
        err = sys3(NR_fchdir, fd, 0, 0);
    sys3(NR_close, fd, 0, 0);
    return err;
}

/* Stay root as the step's parent: wait for it, leave its exit code in `file` (a new
   file, never through a link), exit with it. Returns only in the child, which goes on
   to drop its privileges and run the step. */
static void reap_into(const char *file) {
    int status = 0;
    long pid = sys3(NR_fork, 0, 0, 0), err, fd;
    if (pid == 0) return;
    if (pid < 0) {
        say("cannot fork", pid);
        leave(126);
    }
    do err = sys3(NR_wait4, pid, (long)&status, 0); while (err == -4);  /* EINTR */
    /* exited: its code; killed: 128 + the signal, as a shell says it */
    int code = err < 0 ? 255 : (status & 0x7f) ? 128 + (status & 0x7f) : (status >> 8) & 0xff;
    fd = sys3(NR_open, (long)file, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd >= 0) {
        char text[5];
        int n = 0;
        if (code >= 100) text[n++] = (char)('0' + code / 100);
        if (code >= 10) text[n++] = (char)('0' + code / 10 % 10);
        text[n++] = (char)('0' + code % 10);
        text[n++] = '\n';
        sys3(NR_write, fd, (long)text, n);
        sys3(NR_close, fd, 0, 0);
    }
    leave(code);
}

/* Nothing but stdin, stdout and stderr reaches the step: the agent's own descriptors
   are close-on-exec, but not necessarily what its own parent left it. */
static void close_from(long first) {
    if (sys3(NR_close_range, first, 0xffffffffL, 0) < 0)
        for (long fd = first; fd < 4096; fd++) sys3(NR_close, fd, 0, 0);
}

static int run(int argc, char **argv, char **envp) {
    char byte;
    long uid, gid, err;
    if (argc < 6 || (uid = id_of(argv[1])) <= 0 || (gid = id_of(argv[2])) < 0 ||
        argv[3][0] != '/' || (argv[4][0] != '/' && !(argv[4][0] == '-' && !argv[4][1]))) {
        /* uid 0 is refused: this program is for leaving root */
        say("usage: hedgerow-gate UID GID /WORK/DIR /EXIT/FILE|- PROGRAM [ARG...] "
            "(gate on fd 3; UID not 0)", 0);
        return 127;
    }
    if (!is_pipe(3)) return 125;  /* a gate is a pipe the agent holds, nothing else */
    do err = sys3(NR_read, 3, (long)&byte, 1); while (err == -4);  /* EINTR */
    if (err != 1) return 125;
    close_from(3);
    if ((err = enter(argv[3], uid, gid)) < 0) {
        say("cannot prepare the work folder", err);
        return 126;
    }
    if (argv[4][0] == '/') reap_into(argv[4]);
    if ((err = sys3(NR_setgroups, 0, 0, 0)) < 0 ||
        (err = sys3(NR_setresgid, gid, gid, gid)) < 0 ||
        (err = sys3(NR_setresuid, uid, uid, uid)) < 0) {
        say("cannot drop privileges", err);
        return 126;
    }
    err = sys3(NR_execve, (long)argv[5], (long)(argv + 5), (long)envp);
    say("cannot run the step", err);
    return 127;
}

#ifdef FREESTANDING
/* The kernel's initial stack: argc, argv[], NULL, envp[], NULL. */
__attribute__((used)) void gate_start(long *sp) {
    int argc = (int)sp[0];
    char **argv = (char **)(sp + 1);
    leave(run(argc, argv, argv + argc + 1));
}
__asm__(".text\n.global _start\n_start:\n"
        "  xor %rbp, %rbp\n  mov %rsp, %rdi\n  and $-16, %rsp\n  call gate_start\n  hlt\n");
#else
extern char **environ;
int main(int argc, char **argv) { leave(run(argc, argv, environ)); }
#endif
