/* Make the machine refuse writes to one folder, for the suite's fault-injection tests (tests/faults/__init__.py).
 *
 * Loaded with LD_PRELOAD into a command's process. Writes to regular files under FSDX_FAULT_DIR are counted; once
 * FSDX_FAULT_AFTER of them have gone through, every later one fails with errno FSDX_FAULT_ERRNO (28: no space
 * left, 30: read-only file system); FSDX_FAULT_AFTER=-1 only counts. The count starts again whenever
 * FSDX_FAULT_DIR changes, so one process can run case after case. With errno 30, opening a file there for writing and making a folder there fail
 * too, as on a read-only mount. Python, Rust (safetensors) and C++ (pyarrow, OpenCV) all write through these calls.
 */
#define _GNU_SOURCE
#define _LARGEFILE64_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static long writes_done = 0;  /* writes let through since FSDX_FAULT_DIR last changed */
static long writes_refused = 0;
static char counted_dir[4096] = "";

static const char *fault_dir(void) {
    const char *dir = getenv("FSDX_FAULT_DIR");
    if (dir && strncmp(dir, counted_dir, sizeof counted_dir) != 0) {  /* a new case: count from zero */
        strncpy(counted_dir, dir, sizeof counted_dir - 1);
        writes_done = writes_refused = 0;
    }
    return dir;
}

/* For the driver (ctypes): the writes under the folder that went through, and those refused. */
long fsdx_fault_writes_done(void) { return writes_done; }
long fsdx_fault_writes_refused(void) { return writes_refused; }

static int fault_errno(void) {
    const char *text = getenv("FSDX_FAULT_ERRNO");
    return text ? atoi(text) : ENOSPC;
}

static long fault_after(void) {
    const char *text = getenv("FSDX_FAULT_AFTER");
    return text ? atol(text) : 0;
}

static int under_fault_dir(const char *path) {
    const char *dir = fault_dir();
    if (!dir || !path) return 0;
    size_t length = strlen(dir);
    return strncmp(path, dir, length) == 0 && (path[length] == '/' || path[length] == '\0');
}

/* Whether fd is a regular file under the fault folder. */
static int guarded_fd(int fd) {
    struct stat info;
    if (!fault_dir() || fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) return 0;
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t length = readlink(link, path, sizeof path - 1);
    if (length < 0) return 0;
    path[length] = '\0';
    return under_fault_dir(path);
}

/* Whether this write must fail (counts the writes that go through). */
static int refuse(int fd) {
    if (!guarded_fd(fd)) return 0;
    long after = fault_after();
    if (after < 0 || writes_done < after) {
        writes_done++;
        return 0;
    }
    writes_refused++;
    errno = fault_errno();
    return 1;
}

/* A relative path as an absolute one, for the folder check. */
static int guarded_path(int dirfd, const char *path) {
    if (!fault_dir() || fault_errno() != EROFS || fault_after() != 0 || !path) return 0;
    if (path[0] == '/') return under_fault_dir(path);
    char base[4096], full[8192];
    if (dirfd == AT_FDCWD) {
        if (!getcwd(base, sizeof base)) return 0;
    } else {
        char link[64];
        snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
        ssize_t length = readlink(link, base, sizeof base - 1);
        if (length < 0) return 0;
        base[length] = '\0';
    }
    snprintf(full, sizeof full, "%s/%s", base, path);
    return under_fault_dir(full);
}

#define REAL(name) static __typeof__(&name) real_##name; \
    if (!real_##name) real_##name = (__typeof__(&name))dlsym(RTLD_NEXT, #name)

ssize_t write(int fd, const void *buffer, size_t count) {
    REAL(write);
    if (refuse(fd)) return -1;
    return real_write(fd, buffer, count);
}

ssize_t pwrite(int fd, const void *buffer, size_t count, off_t offset) {
    REAL(pwrite);
    if (refuse(fd)) return -1;
    return real_pwrite(fd, buffer, count, offset);
}

ssize_t pwrite64(int fd, const void *buffer, size_t count, off_t offset) {
    REAL(pwrite64);
    if (refuse(fd)) return -1;
    return real_pwrite64(fd, buffer, count, offset);
}

ssize_t writev(int fd, const struct iovec *vector, int count) {
    REAL(writev);
    if (refuse(fd)) return -1;
    return real_writev(fd, vector, count);
}

ssize_t pwritev(int fd, const struct iovec *vector, int count, off_t offset) {
    REAL(pwritev);
    if (refuse(fd)) return -1;
    return real_pwritev(fd, vector, count, offset);
}

size_t fwrite(const void *buffer, size_t size, size_t count, FILE *stream) {
    REAL(fwrite);
    if (refuse(fileno(stream))) return 0;
    return real_fwrite(buffer, size, count, stream);
}

static int opens_for_writing(int flags) { return (flags & (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC)) != 0; }

int open(const char *path, int flags, ...) {
    REAL(open);
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) { va_list args; va_start(args, flags); mode = va_arg(args, mode_t); va_end(args); }
    if (opens_for_writing(flags) && guarded_path(AT_FDCWD, path)) { errno = EROFS; return -1; }
    return real_open(path, flags, mode);
}

int open64(const char *path, int flags, ...) {
    REAL(open64);
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) { va_list args; va_start(args, flags); mode = va_arg(args, mode_t); va_end(args); }
    if (opens_for_writing(flags) && guarded_path(AT_FDCWD, path)) { errno = EROFS; return -1; }
    return real_open64(path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...) {
    REAL(openat);
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) { va_list args; va_start(args, flags); mode = va_arg(args, mode_t); va_end(args); }
    if (opens_for_writing(flags) && guarded_path(dirfd, path)) { errno = EROFS; return -1; }
    return real_openat(dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...) {
    REAL(openat64);
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) { va_list args; va_start(args, flags); mode = va_arg(args, mode_t); va_end(args); }
    if (opens_for_writing(flags) && guarded_path(dirfd, path)) { errno = EROFS; return -1; }
    return real_openat64(dirfd, path, flags, mode);
}

int mkdir(const char *path, mode_t mode) {
    REAL(mkdir);
    if (guarded_path(AT_FDCWD, path)) { errno = EROFS; return -1; }
    return real_mkdir(path, mode);
}

int mkdirat(int dirfd, const char *path, mode_t mode) {
    REAL(mkdirat);
    if (guarded_path(dirfd, path)) { errno = EROFS; return -1; }
    return real_mkdirat(dirfd, path, mode);
}
