/* lanner-cni: the CNI plugin's fast path, compiled (make cni -> netdp/cni/bin/lanner-cni).
 *
 * Exactly fast() of netdp/cni/plugin.py, without an interpreter to start: for ADD, DEL, CHECK, STATUS
 * and GC, read stdin, find the top-level "agentSocket" string (top_level_string()'s rules), send
 * RAW_MAGIC + the CNI_* variables + "\0\0" + stdin to the agent, print its reply after the first byte,
 * which is the exit code. Everything else is handed over to the Python plugin: the launcher
 * `lanner cni install` writes next to this binary (LCNI_LAUNCHER_NAME, looked up beside the real file of
 * /proc/self/exe) is exec'd with the stdin already read as fd 0 (a memfd), and decides as if it had been
 * exec'd itself. Once the request was sent it must not be sent again: a failure then is handed over with
 * LCNI_AFTER_SEND_ENV saying what happened, and the Python side only prints the error.
 * Constants come from lanner_cni_consts.h, generated from the Python files by cheader.py. */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "lanner_cni_consts.h"

extern char **environ;

struct buf { char *p; size_t n, cap; };

static int reserve(struct buf *b, size_t more) {
	if (b->cap - b->n >= more)
		return 0;
	size_t cap = b->cap ? b->cap : 65536;
	while (cap - b->n < more)
		cap *= 2;
	char *p = realloc(b->p, cap);
	if (!p)
		return -1;
	b->p = p, b->cap = cap;
	return 0;
}

static int put(struct buf *b, const void *d, size_t n) {
	if (reserve(b, n))
		return -1;
	memcpy(b->p + b->n, d, n);
	b->n += n;
	return 0;
}

static int write_all(int fd, const char *p, size_t n) {
	while (n) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w, n -= (size_t)w;
	}
	return 0;
}

static int is_ws(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); } /* bytes.lstrip() */

/* plugin.py's top_level_string(): 1 found (*val, *len), 0 no such top-level member, -1 cannot tell. */
static int top_level_string(const char *raw, size_t n, const char *key, const char **val, size_t *len) {
	size_t klen = strlen(key), i = 0;
	long depth = 0;
	while (i < n) {
		char c = raw[i];
		if (c == '"') { /* a string token: find its end, honouring backslash escapes */
			size_t j = i + 1, k;
			for (;;) {
				const char *q = j < n ? memchr(raw + j, '"', n - j) : NULL;
				if (!q)
					return -1;
				j = (size_t)(q - raw);
				for (k = j - 1; raw[k] == '\\'; k--)
					;
				if ((j - 1 - k) % 2 == 0)
					break;
				j++;
			}
			size_t start = i + 1;
			i = j + 1;
			if (depth == 1 && j - start == klen && !memcmp(raw + start, key, klen)) {
				size_t r = i;
				while (r < n && is_ws(raw[r]))
					r++;
				if (r < n && raw[r] == ':') {
					for (r++; r < n && is_ws(raw[r]); r++)
						;
					const char *end = r + 1 < n ? memchr(raw + r + 1, '"', n - r - 1) : NULL;
					if (r >= n || raw[r] != '"' || !end || memchr(raw + r + 1, '\\', (size_t)(end - raw) - r - 1))
						return -1;
					*val = raw + r + 1, *len = (size_t)(end - *val);
					return 1;
				}
			}
			continue;
		}
		if (c == '{' || c == '[')
			depth++;
		else if (c == '}' || c == ']')
			depth--;
		i++;
	}
	return depth ? -1 : 0;
}

/* The Python plugin cannot be run (`what` failed with `err`): a CNI error, printed as plugin.py prints
 * errors (json.dumps), 11 (STATUS: 50); DEL succeeds, as plugin.py's DEL with the agent unreachable. */
static _Noreturn void fail(const char *cmd, const char *what, int err, const char *hint) {
	if (!strcmp(cmd, "DEL")) {
		fprintf(stderr, "lanner-cni: DEL: cannot run the Python plugin: %s: %s; nothing released now\n", what,
			strerror(err));
		exit(0);
	}
	printf("{\"cniVersion\": \"%s\", \"code\": %d, \"msg\": \"lanner-cni cannot run its Python part\", "
	       "\"details\": \"", LCNI_LATEST, strcmp(cmd, "STATUS") ? LCNI_E_TRY_AGAIN_LATER : LCNI_E_NOT_AVAILABLE);
	for (const unsigned char *s = (const unsigned char *)what; *s; s++)
		printf(*s == '"' || *s == '\\' ? "\\%c" : *s < 0x20 || *s > 0x7e ? "\\u%04x" : "%c", *s);
	printf(": %s%s\"}\n", strerror(err), hint);
	exit(1);
}

/* Exec the launcher next to this binary; `in` (when not NULL) becomes its stdin. Does not return. */
static _Noreturn void hand_over(char **argv, const char *cmd, const struct buf *in, const char *note) {
	static char path[PATH_MAX + sizeof(LCNI_LAUNCHER_NAME)];
	ssize_t n = readlink("/proc/self/exe", path, PATH_MAX);
	if (n <= 0 || n >= PATH_MAX)
		fail(cmd, "/proc/self/exe", n < 0 ? errno : ENAMETOOLONG, "");
	path[n] = 0;
	strcpy(strrchr(path, '/') + 1, LCNI_LAUNCHER_NAME);
	if (note ? setenv(LCNI_AFTER_SEND_ENV, note, 1) : unsetenv(LCNI_AFTER_SEND_ENV))
		fail(cmd, LCNI_AFTER_SEND_ENV, errno, "");
	if (in) {
		int fd = memfd_create("lanner-cni-stdin", MFD_CLOEXEC);
		if (fd < 0 || write_all(fd, in->p, in->n) || lseek(fd, 0, SEEK_SET) || dup2(fd, 0) < 0)
			fail(cmd, "memfd_create (stdin for the Python plugin)", errno, "");
		close(fd);
	}
	argv[0] = path;
	execv(path, argv);
	fail(cmd, path, errno, "; run 'lanner cni install' again");
}

static long now_ms(void) {
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000L + t.tv_nsec / 1000000;
}

/* Wait until fd is ready for `events`: 0, or -1 with errno (ETIMEDOUT when `ms` passed). */
static int wait_fd(int fd, short events, long ms) {
	struct pollfd p = {.fd = fd, .events = events};
	int r = poll(&p, 1, ms < 0 ? 0 : (int)ms);
	if (r == 0)
		errno = ETIMEDOUT;
	return r > 0 || (r < 0 && errno == EINTR) ? 0 : -1; /* EINTR: the caller tries again */
}

int main(int argc, char **argv) {
	static const char *fast[] = LCNI_FAST_COMMANDS;
	const char *cmd = getenv("CNI_COMMAND");
	size_t i;
	(void)argc;
	for (i = 0; cmd && i < sizeof fast / sizeof *fast && strcmp(cmd, fast[i]); i++)
		;
	if (!cmd || i == sizeof fast / sizeof *fast)
		hand_over(argv, cmd ? cmd : "", NULL, NULL); /* VERSION, no or unknown CNI_COMMAND */

	struct buf in = {0}, frame = {0}, reply = {0};
	for (;;) {
		if (reserve(&in, 65536))
			fail(cmd, "reading stdin", ENOMEM, "");
		ssize_t r = read(0, in.p + in.n, in.cap - in.n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) /* Python meets the same error (or gets what was read) */
			hand_over(argv, cmd, in.n ? &in : NULL, NULL);
		if (r == 0)
			break;
		in.n += (size_t)r;
	}
	const char *sock = LCNI_DEFAULT_SOCKET;
	size_t slen = strlen(sock);
	int found = top_level_string(in.p, in.n, "agentSocket", &sock, &slen);
	if (found == 0 || (found == 1 && slen == 0))
		sock = LCNI_DEFAULT_SOCKET, slen = strlen(sock);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	/* not absolute, or what only Python tells apart (non-ASCII, NUL, too long): the slow path decides */
	if (found < 0 || sock[0] != '/' || slen >= sizeof sa.sun_path)
		hand_over(argv, cmd, &in, NULL);
	for (i = 0; i < slen; i++)
		if (!sock[i] || (unsigned char)sock[i] > 0x7e)
			hand_over(argv, cmd, &in, NULL);
	memcpy(sa.sun_path, sock, slen);

	/* the frame: RAW_MAGIC, each CNI_* variable once (the first, as os.environb keeps it), "\0\0", stdin */
	int first = 1, ok = !put(&frame, LCNI_RAW_MAGIC, LCNI_RAW_MAGIC_LEN);
	for (char **e = environ; *e && ok; e++) {
		const char *eq = strchr(*e, '=');
		if (strncmp(*e, "CNI_", 4) || !eq)
			continue;
		char **d = environ;
		while (d < e && !(!strncmp(*d, *e, (size_t)(eq - *e) + 1)))
			d++;
		if (d < e)
			continue;
		ok = (first || !put(&frame, "", 1)) && !put(&frame, *e, strlen(*e));
		first = 0;
	}
	if (!ok || put(&frame, "\0\0", 2) || put(&frame, in.p, in.n))
		hand_over(argv, cmd, &in, NULL);

	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		hand_over(argv, cmd, &in, NULL);
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa)) {
		int err = 0;
		socklen_t el = sizeof err;
		if (errno != EINPROGRESS || wait_fd(fd, POLLOUT, LCNI_CONNECT_TIMEOUT_MS) ||
		    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) || err)
			hand_over(argv, cmd, &in, NULL); /* nothing was sent: the slow path tries and reports */
	}

	/* sent from here on: a failure is reported, never retried */
	static char note[64 + 2 * 200];
	long deadline = now_ms() + LCNI_REPLY_TIMEOUT_MS; /* sendall: one deadline for the whole send */
	size_t off = 0;
	while (off < frame.n) {
		ssize_t w = send(fd, frame.p + off, frame.n - off, MSG_NOSIGNAL);
		if (w > 0)
			off += (size_t)w;
		else if (w < 0 && errno != EINTR && (errno != EAGAIN || wait_fd(fd, POLLOUT, deadline - now_ms())))
			goto failed;
	}
	if (shutdown(fd, SHUT_WR))
		goto failed;
	for (;;) { /* the reply, to EOF; each read may wait REPLY_TIMEOUT (socket.settimeout) */
		if (reserve(&reply, 65536))
			goto failed;
		ssize_t r = recv(fd, reply.p + reply.n, 65536, 0);
		if (r == 0)
			break;
		if (r > 0) {
			reply.n += (size_t)r;
			if (reply.n > LCNI_MAX_REPLY)
				hand_over(argv, cmd, &in, "too-large");
		} else if (errno != EINTR && (errno != EAGAIN || wait_fd(fd, POLLIN, LCNI_REPLY_TIMEOUT_MS)))
			goto failed;
	}
	close(fd);
	if (reply.n == 0)
		hand_over(argv, cmd, &in, "no-reply");
	if (reply.p[0] != '0' && reply.p[0] != '1') {
		int m = snprintf(note, sizeof note, "bad-reply:");
		for (i = 0; i < reply.n && i < 200; i++)
			m += snprintf(note + m, sizeof note - (size_t)m, "%02x", (unsigned char)reply.p[i]);
		hand_over(argv, cmd, &in, note);
	}
	if (write_all(1, reply.p + 1, reply.n - 1))
		return 1;
	return reply.p[0] - '0';

failed:
	if (errno == ETIMEDOUT)
		hand_over(argv, cmd, &in, "timeout");
	snprintf(note, sizeof note, "errno:%d", errno);
	hand_over(argv, cmd, &in, note);
	return 1;
}
