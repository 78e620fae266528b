/* The least any HTTP hop costs on these cores: a relay in C that pumps each client
 * connection's bytes to a connection of its own to the container and back, parsing nothing,
 * checking nothing (one thread, epoll, blocking sends). bench/invoke.py measures it beside
 * bench/relay_floor.py (the same in Python) and openmaker's InvokeEndpoint.
 *
 *     relay_floor PORT CONTAINER_HOST CONTAINER_PORT
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_FD 65536

static int peer[MAX_FD]; /* each end's other end; -1 once the pair has ended */

static int address(const char *host, int port, struct sockaddr_in *into) {
    into->sin_family = AF_INET;
    into->sin_port = htons((unsigned short)port);
    return inet_pton(AF_INET, host, &into->sin_addr) == 1 ? 0 : -1;
}

static void watch(int poll, int fd) {
    struct epoll_event event = {.events = EPOLLIN, .data.fd = fd};
    epoll_ctl(poll, EPOLL_CTL_ADD, fd, &event);
}

static void end_pair(int fd) {
    int other = peer[fd];
    close(fd); /* closing also takes it out of the epoll set */
    close(other);
    peer[fd] = peer[other] = -1; /* an event of this batch may still name either */
}

static int send_all(int fd, const char *data, ssize_t size) {
    while (size > 0) {
        ssize_t sent = send(fd, data, (size_t)size, MSG_NOSIGNAL);
        if (sent <= 0) return -1;
        data += sent;
        size -= sent;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: relay_floor PORT CONTAINER_HOST CONTAINER_PORT\n");
        return 2;
    }
    struct sockaddr_in here = {0}, container = {0};
    if (address("127.0.0.1", atoi(argv[1]), &here) || address(argv[2], atoi(argv[3]), &container)) {
        fprintf(stderr, "relay_floor: not an IPv4 address\n");
        return 2;
    }
    int one = 1, listener = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(listener, (struct sockaddr *)&here, sizeof here) || listen(listener, 128)) {
        perror("relay_floor: listen");
        return 1;
    }
    int poll = epoll_create1(0);
    watch(poll, listener);
    static char buffer[1 << 17];
    struct epoll_event ready[64];
    for (;;) {
        int count = epoll_wait(poll, ready, 64, -1);
        for (int i = 0; i < count; i++) {
            int fd = ready[i].data.fd;
            if (fd == listener) {
                int client = accept(listener, NULL, NULL);
                if (client < 0) continue;
                int upstream = socket(AF_INET, SOCK_STREAM, 0);
                if (client >= MAX_FD || upstream < 0 || upstream >= MAX_FD ||
                    connect(upstream, (struct sockaddr *)&container, sizeof container)) {
                    close(client);
                    if (upstream >= 0) close(upstream);
                    continue;
                }
                setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                setsockopt(upstream, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                peer[client] = upstream;
                peer[upstream] = client;
                watch(poll, client);
                watch(poll, upstream);
                continue;
            }
            if (peer[fd] < 0) continue;
            /* Not blocking: the number may be a connection accepted later in this batch. */
            ssize_t got = recv(fd, buffer, sizeof buffer, MSG_DONTWAIT);
            if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) continue;
            if (got <= 0 || send_all(peer[fd], buffer, got)) end_pair(fd);
        }
    }
}
