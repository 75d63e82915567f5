#define _GNU_SOURCE
/* Baseline for rendezvous-load: a bare C epoll server that answers every line with one fixed
 * reply. It is the ceiling a real server is compared against (same load generator, same
 * machine). Build and run:
 *   gcc -O2 -o /tmp/bare-epoll rendezvous/benches/bare-epoll.c
 *   /tmp/bare-epoll 127.0.0.1 8001 [reply]        (default reply: "NODES EMPTY")
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s IP PORT [REPLY]\n", argv[0]); return 2; }
    char reply[8192];
    snprintf(reply, sizeof reply, "%s\r\n", argc > 3 ? argv[3] : "NODES EMPTY");
    size_t reply_len = strlen(reply);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    inet_pton(AF_INET, argv[1], &a.sin_addr);
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) || listen(lfd, 1024)) { perror("listen"); return 1; }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd}, evs[1024];
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    char buf[16384];
    for (;;) {
        int n = epoll_wait(ep, evs, 1024, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == lfd) {
                int c;
                while ((c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                }
                continue;
            }
            ssize_t r = read(fd, buf, sizeof buf);
            if (r <= 0) { close(fd); continue; }
            for (ssize_t j = 0; j < r; j++)
                if (buf[j] == '\n' && write(fd, reply, reply_len) < 0) { close(fd); break; }
        }
    }
}
