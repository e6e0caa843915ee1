/* udp_forwarder: a bare UDP forwarder, the floor row of benchmarks/udp_paths.py.
 *
 *     cc -O2 -o udp_forwarder benchmarks/udp_forwarder.c
 *     ./udp_forwarder FRONT:TARGET [FRONT:TARGET ...]
 *
 * For each FRONT:TARGET pair it binds a front socket on 127.0.0.1:FRONT (0:
 * any free port) and forwards every datagram it receives there to
 * 127.0.0.1:TARGET from an outbound socket of the sending client's own
 * (connected to the target, as a UDP association's relay socket is), and
 * every reply that comes back to that socket to the client, from the front
 * socket.  Once listening it prints "ready PORT [PORT ...]" (the front
 * ports, in the order given) on stdout.
 *
 * Nothing of SOCKS: no RFC 1928 section 7 header, no checks.  One front
 * socket serves every client, so one recvmmsg takes many clients'
 * datagrams, and the replies of one epoll round leave in one sendmmsg per
 * front socket.  It measures what the kernel's UDP path costs a relaying
 * process here; it is not a server anyone runs.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BATCH 64
#define DGRAM 65536
#define BUCKETS 4096
#define MAX_FRONTS 8

struct peer {                 /* one client of one front socket */
    struct sockaddr_in client;
    int out;                  /* connected to the front's target */
    int front;
    struct peer *next;        /* in its hash bucket */
};

struct front {
    int fd;
    struct sockaddr_in target;
    /* Replies queued during an epoll round, sent with one sendmmsg. */
    struct mmsghdr out[BATCH];
    struct iovec iov[BATCH];
    struct sockaddr_in to[BATCH];
    char *buf[BATCH];
    int queued;
};

static struct front fronts[MAX_FRONTS];
static int nfronts, ep;
static struct peer *table[BUCKETS];

static unsigned bucket(const struct sockaddr_in *a, int front) {
    return (a->sin_addr.s_addr * 2654435761u ^ a->sin_port * 40503u ^ (unsigned)front) % BUCKETS;
}

static struct peer *peer_of(int front, const struct sockaddr_in *client) {
    unsigned b = bucket(client, front);
    for (struct peer *p = table[b]; p != NULL; p = p->next)
        if (p->front == front && p->client.sin_port == client->sin_port &&
            p->client.sin_addr.s_addr == client->sin_addr.s_addr)
            return p;
    struct peer *p = calloc(1, sizeof *p);
    if (p == NULL)
        return NULL;
    p->out = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (p->out < 0 || connect(p->out, (struct sockaddr *)&fronts[front].target,
                              sizeof fronts[front].target) < 0) {
        if (p->out >= 0)
            close(p->out);
        free(p);
        return NULL;
    }
    p->client = *client;
    p->front = front;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = p};
    epoll_ctl(ep, EPOLL_CTL_ADD, p->out, &ev);
    p->next = table[b];
    table[b] = p;
    return p;
}

static void flush(struct front *f) {
    int done = 0;
    while (done < f->queued) {
        int n = sendmmsg(f->fd, f->out + done, f->queued - done, 0);
        if (n <= 0)
            break;            /* a full socket buffer: the rest is lost, as a relay's would be */
        done += n;
    }
    f->queued = 0;
}

/* Datagrams from clients to the front: on to the target, each from its client's socket. */
static void from_clients(int front) {
    static struct mmsghdr msgs[BATCH];
    static struct iovec iov[BATCH];
    static struct sockaddr_in from[BATCH];
    static char bufs[BATCH][DGRAM];
    struct front *f = &fronts[front];
    for (;;) {
        for (int i = 0; i < BATCH; i++) {
            iov[i] = (struct iovec){bufs[i], DGRAM};
            msgs[i].msg_hdr = (struct msghdr){.msg_name = &from[i], .msg_namelen = sizeof from[i],
                                              .msg_iov = &iov[i], .msg_iovlen = 1};
        }
        int n = recvmmsg(f->fd, msgs, BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0)
            return;
        for (int i = 0; i < n; i++) {
            struct peer *p = peer_of(front, &from[i]);
            if (p != NULL)
                (void)!send(p->out, bufs[i], msgs[i].msg_len, 0);
        }
        if (n < BATCH)
            return;
    }
}

/* Replies from a target to one client's socket: queued for the front's sendmmsg. */
static void from_target(struct peer *p) {
    struct front *f = &fronts[p->front];
    for (;;) {
        if (f->queued == BATCH)
            flush(f);
        int i = f->queued;
        ssize_t n = recv(p->out, f->buf[i], DGRAM, 0);
        if (n < 0)
            return;
        f->to[i] = p->client;
        f->iov[i] = (struct iovec){f->buf[i], (size_t)n};
        f->out[i].msg_hdr = (struct msghdr){.msg_name = &f->to[i], .msg_namelen = sizeof f->to[i],
                                            .msg_iov = &f->iov[i], .msg_iovlen = 1};
        f->queued++;
    }
}

int main(int argc, char **argv) {
    if (argc < 2 || argc - 1 > MAX_FRONTS) {
        fprintf(stderr, "usage: %s FRONT:TARGET [FRONT:TARGET ...] (at most %d)\n", argv[0],
                MAX_FRONTS);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    ep = epoll_create1(EPOLL_CLOEXEC);
    for (int i = 1; i < argc; i++) {
        int front_port, target_port;
        if (sscanf(argv[i], "%d:%d", &front_port, &target_port) != 2) {
            fprintf(stderr, "udp_forwarder: %s is not FRONT:TARGET\n", argv[i]);
            return 2;
        }
        struct front *f = &fronts[nfronts];
        f->fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        int size = 4 << 20;
        setsockopt(f->fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
        setsockopt(f->fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
        struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(front_port),
                                   .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        if (bind(f->fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
            perror("udp_forwarder: bind");
            return 1;
        }
        f->target = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons(target_port),
                                         .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        for (int j = 0; j < BATCH; j++)
            f->buf[j] = malloc(DGRAM);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
        ev.data.u64 = (uint64_t)nfronts;  /* fronts are 0..7; peers are pointers */
        epoll_ctl(ep, EPOLL_CTL_ADD, f->fd, &ev);
        nfronts++;
    }
    printf("ready");
    for (int i = 0; i < nfronts; i++) {
        struct sockaddr_in a;
        socklen_t len = sizeof a;
        getsockname(fronts[i].fd, (struct sockaddr *)&a, &len);
        printf(" %d", ntohs(a.sin_port));
    }
    printf("\n");
    fflush(stdout);
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.u64 < MAX_FRONTS)
                from_clients((int)evs[i].data.u64);
            else
                from_target(evs[i].data.ptr);
        }
        for (int i = 0; i < nfronts; i++)
            if (fronts[i].queued)
                flush(&fronts[i]);
    }
}
