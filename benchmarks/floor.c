/* floor: the least a SOCKS5 CONNECT server can do, as a reference for benchmarks/run.py.
 *
 *     cc -O2 -o floor benchmarks/floor.c && ./floor 127.0.0.2 1081
 *
 * One thread, one epoll set, no authentication (X'00' only), CONNECT to an
 * IPv4 address only, no policy, no logging, no timeouts: every other request
 * gets its RFC 1928 failure reply and the close.  Each connection costs the
 * system calls any server must make: accept4, the greeting's read and the
 * method's write, the request's read, socket, connect, the connect's
 * completion (epoll, SO_ERROR, getsockname for BND), the reply, then
 * recv/send relaying through a 16 KiB buffer per direction (half-close
 * relayed with shutdown), and two closes.  Each socket joins the epoll set
 * once, edge-triggered for reading and writing, and leaves it by its close.
 * TCP_NODELAY is set on the listener (accepted sockets inherit it) and on
 * each outbound socket.
 *
 * It is a measuring stick, not a server: what a short connection costs the
 * kernel on this machine, so that fastsocks' figure can be read against it.
 *
 * Two compile-time knobs make it a stick for bulk relaying too (RESULTS.md,
 * "Bulk by copying"): -DBUF=N relays through N-byte buffers instead of
 * 16 KiB, and -DSPLICE=N relays by splice(2) through a pipe of N bytes per
 * direction (made at the first read; its descriptors are not closed, which a
 * throughput run of a few connections does not mind).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef BUF
#define BUF 16384
#endif

enum { GREETING, REQUEST, CONNECTING, RELAY, DEAD };
#define EDGES (EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET)

struct conn;

struct end {                  /* one socket of a connection, as epoll names it */
    struct conn *c;
    int fd;
    int side;                 /* 0: client, 1: target */
};

struct dir {                  /* bytes read from one side, waiting for the other */
    char buf[BUF];
    int off, len;
    int pipe[2];              /* -DSPLICE: the direction's pipe (len: bytes in it) */
    int eof;                  /* the source said EOF (passed on with shutdown) */
    int drained;              /* the last read emptied the source, and no edge came since */
    int fin;                  /* an edge said the source has shut down: read to the EOF */
};

struct conn {
    int state;
    struct end e[2];
    struct dir d[2];          /* d[0]: client -> target, d[1]: target -> client */
    char hs[600];             /* the greeting and the request */
    int hs_len;
    struct conn *next_dead;
};

static int ep;
static struct conn *dead;     /* freed after the epoll batch that may still name them */

static void watch(struct end *e, int op, unsigned events) {
    struct epoll_event ev = {.events = events, .data.ptr = e};
    epoll_ctl(ep, op, e->fd, &ev);
}

static void finish(struct conn *c) {
    close(c->e[0].fd);        /* closing the last descriptor leaves the epoll set */
    if (c->e[1].fd >= 0)
        close(c->e[1].fd);
    c->state = DEAD;
    c->next_dead = dead;
    dead = c;
}

static void refuse(struct conn *c, unsigned char code) {
    unsigned char reply[10] = {5, code, 0, 1};
    (void)!send(c->e[0].fd, reply, sizeof reply, MSG_NOSIGNAL);
    finish(c);
}

static int over(struct conn *c) {
    return c->d[0].eof && c->d[1].eof && c->d[0].len == 0 && c->d[1].len == 0;
}

/* Move what can move from side s to the other.  The events are edges: a
 * read that returns less than it asked for has emptied the socket, and new
 * bytes raise a new edge (which clears ``drained``), so that read is not
 * followed by one that can only say EAGAIN; unless an edge said EPOLLRDHUP,
 * when the EOF behind the bytes raises no edge of its own.  Returns 0 on an
 * error. */
static int move(struct conn *c, int s) {
    struct dir *d = &c->d[s];
    int src = c->e[s].fd, dst = c->e[!s].fd;
    for (;;) {
#ifdef SPLICE
        if (!d->pipe[1] && d->len > 0) {  /* bytes that came with the request, in buf */
            ssize_t n = send(dst, d->buf + d->off, d->len, MSG_NOSIGNAL);
            if (n < 0)
                return errno == EAGAIN;
            d->off += n;
            d->len -= n;
            if (d->len > 0)
                return 1;
            d->off = 0;
        }
        if (!d->pipe[1]) {
            if (pipe2(d->pipe, O_NONBLOCK) < 0)
                return 0;
            fcntl(d->pipe[1], F_SETPIPE_SZ, SPLICE);
        }
        if (d->len > 0) {                 /* bytes in the pipe, waiting for dst */
            ssize_t n = splice(d->pipe[0], NULL, dst, NULL, d->len, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n < 0)
                return errno == EAGAIN;
            d->len -= n;
            if (d->len > 0)
                return 1;
        }
        if (d->eof)
            return 1;
        ssize_t got = splice(src, NULL, d->pipe[1], NULL, SPLICE, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (got < 0)
            return errno == EAGAIN;
        if (got == 0) {
            d->eof = 1;
            if (!over(c))
                shutdown(dst, SHUT_WR);
            return 1;
        }
        d->len = got;             /* a short splice proves nothing: read on to EAGAIN */
        continue;
#endif
        if (d->len > 0) {                 /* bytes waiting for dst */
            ssize_t n = send(dst, d->buf + d->off, d->len, MSG_NOSIGNAL);
            if (n < 0)
                return errno == EAGAIN;   /* dst's EPOLLOUT edge brings us back */
            d->off += n;
            d->len -= n;
            if (d->len > 0)
                return 1;
            d->off = 0;
            if (d->drained)
                return 1;
        }
        if (d->eof)
            return 1;
        ssize_t n = recv(src, d->buf, BUF, 0);
        if (n < 0)
            return errno == EAGAIN;
        if (n == 0) {
            d->eof = 1;
            if (!over(c))         /* else the close that follows says it */
                shutdown(dst, SHUT_WR);
            return 1;
        }
        d->len = n;
        d->drained = n < BUF && !d->fin;
    }
}

static void handshake(struct conn *c) {
    int fd = c->e[0].fd;
    ssize_t n = recv(fd, c->hs + c->hs_len, sizeof c->hs - c->hs_len, 0);
    if (n <= 0 || c->hs_len + n == (int)sizeof c->hs) {   /* gone, or more than a handshake */
        if (n < 0 && errno == EAGAIN) return;
        finish(c);
        return;
    }
    c->hs_len += n;
    unsigned char *p = (unsigned char *)c->hs;
    if (c->state == GREETING) {
        if (c->hs_len < 2 || c->hs_len < 2 + p[1]) return;
        if (p[0] != 5 || !memchr(p + 2, 0, p[1])) {
            (void)!send(fd, "\x05\xff", 2, MSG_NOSIGNAL);
            finish(c);
            return;
        }
        int used = 2 + p[1];
        memmove(c->hs, c->hs + used, c->hs_len - used);
        c->hs_len -= used;
        (void)!send(fd, "\x05\x00", 2, MSG_NOSIGNAL);
        c->state = REQUEST;
    }
    if (c->hs_len < 4) return;
    if (p[0] != 5 || p[1] != 1 || p[3] != 1) {
        refuse(c, p[0] != 5 ? 1 : p[1] != 1 ? 7 : 8);
        return;
    }
    if (c->hs_len < 10) return;
    struct sockaddr_in to = {.sin_family = AF_INET};
    memcpy(&to.sin_addr, p + 4, 4);
    memcpy(&to.sin_port, p + 8, 2);
    /* Bytes after the request go to the target first. */
    c->d[0].len = c->hs_len - 10;
    memcpy(c->d[0].buf, c->hs + 10, c->d[0].len);
    int t = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (t < 0) { refuse(c, 1); return; }
    int one = 1;
    setsockopt(t, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(t, (struct sockaddr *)&to, sizeof to) < 0 && errno != EINPROGRESS) {
        close(t);
        refuse(c, errno == ECONNREFUSED ? 5 : errno == ENETUNREACH ? 3 : 4);
        return;
    }
    c->e[1].fd = t;
    c->state = CONNECTING;    /* the client's edges are only noted until the connect is done */
    c->d[0].drained = !c->d[0].fin;   /* the handshake's read was short: the client is empty */
    watch(&c->e[1], EPOLL_CTL_ADD, EDGES);
}

static void connected(struct conn *c) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->e[1].fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        refuse(c, err == ECONNREFUSED ? 5 : err == ENETUNREACH ? 3 : 4);
        return;
    }
    struct sockaddr_in bnd;
    len = sizeof bnd;
    getsockname(c->e[1].fd, (struct sockaddr *)&bnd, &len);
    unsigned char reply[10] = {5, 0, 0, 1};
    memcpy(reply + 4, &bnd.sin_addr, 4);
    memcpy(reply + 8, &bnd.sin_port, 2);
    (void)!send(c->e[0].fd, reply, sizeof reply, MSG_NOSIGNAL);
    c->state = RELAY;
    /* Bytes (or an EOF) the client sent during the connect; the target has
     * sent nothing yet, and its first bytes will raise an edge. */
    if ((c->d[0].len > 0 || !c->d[0].drained) && (!move(c, 0) || over(c)))
        finish(c);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s HOST PORT\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) {
        fprintf(stderr, "floor: %s is not an IPv4 address\n", argv[1]);
        return 2;
    }
    int one = 1;
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(ls, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (bind(ls, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(ls, 4096) < 0) {
        perror("floor: listen");
        return 1;
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &lev);
    fprintf(stderr, "floor listening on %s:%s\n", argv[1], argv[2]);
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            struct end *e = evs[i].data.ptr;
            if (e == NULL) {              /* the listener: take every waiting client */
                for (;;) {
                    int fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0) break;
                    struct conn *c = calloc(1, sizeof *c);
                    if (c == NULL) { close(fd); continue; }
                    c->e[0] = (struct end){c, fd, 0};
                    c->e[1] = (struct end){c, -1, 1};
                    watch(&c->e[0], EPOLL_CTL_ADD, EDGES);
                }
                continue;
            }
            struct conn *c = e->c;
            unsigned ev = evs[i].events;
            int s = e->side;
            if (ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                c->d[s].fin = 1;
            if (c->state == GREETING || c->state == REQUEST) {
                if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                    handshake(c);
            } else if (c->state == CONNECTING) {
                if (e->side == 1)
                    connected(c);
                else if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                    c->d[0].drained = 0;
            } else if (c->state == RELAY) {
                int ok = 1;
                if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
                    c->d[s].drained = 0;          /* new bytes (or EOF) on this side */
                    ok = move(c, s);
                }
                if (ok && (ev & EPOLLOUT) && c->d[!s].len > 0)
                    ok = move(c, !s);             /* room again for what waits for this side */
                if (!ok || over(c))
                    finish(c);
            }
        }
        while (dead != NULL) {
            struct conn *c = dead;
            dead = c->next_dead;
            free(c);
        }
    }
}
