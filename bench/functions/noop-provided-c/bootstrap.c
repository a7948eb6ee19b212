/* The overhead scenario's no-op as a compiled `provided` function, the way Go, Rust and
 * C++ functions use the Runtime API: AWS_LAMBDA_MAX_CONCURRENCY threads, each with one
 * keep-alive connection, polling /next and posting the same fixed answer. Plain libc and
 * pthreads; the bench compiles it with `cc -O2 -pthread` into the function's `bootstrap`.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

static struct sockaddr_in api;
static char api_host[64];
static const char ANSWER[] = "{\"statusCode\":200,\"body\":\"ok\"}";

/* One HTTP/1.1 response on `fd`: its head (in buf, NUL-terminated), body skipped.
 * Returns the status code, or -1 when the connection broke. */
struct reader {
    int fd;
    char buf[65536];
    size_t len; /* bytes in buf */
};

static ssize_t fill(struct reader *r) {
    if (r->len == sizeof r->buf) return -1;
    ssize_t n = read(r->fd, r->buf + r->len, sizeof r->buf - r->len);
    if (n > 0) r->len += (size_t)n;
    return n;
}

/* Reads one response; copies the request id header (if any) into `id`. */
static int response(struct reader *r, char *id, size_t id_cap) {
    char *end;
    for (;;) {
        r->buf[r->len < sizeof r->buf ? r->len : sizeof r->buf - 1] = 0;
        end = strstr(r->buf, "\r\n\r\n");
        if (end) break;
        if (fill(r) <= 0) return -1;
    }
    size_t head = (size_t)(end - r->buf) + 4;
    int status = atoi(r->buf + 9);
    size_t body = 0;
    if (id) id[0] = 0;
    for (char *line = strstr(r->buf, "\r\n") + 2; line < end; line = strstr(line, "\r\n") + 2) {
        if (strncasecmp(line, "content-length:", 15) == 0) body = strtoul(line + 15, NULL, 10);
        if (id && strncasecmp(line, "lambda-runtime-aws-request-id:", 30) == 0) {
            char *v = line + 30;
            while (*v == ' ') v++;
            size_t n = strcspn(v, "\r");
            if (n >= id_cap) n = id_cap - 1;
            memcpy(id, v, n);
            id[n] = 0;
        }
    }
    while (r->len < head + body)
        if (fill(r) <= 0) return -1;
    memmove(r->buf, r->buf + head + body, r->len - head - body);
    r->len -= head + body;
    return status;
}

static int connect_api(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&api, sizeof api) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int send_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void *poll_loop(void *arg) {
    (void)arg;
    struct reader *r = malloc(sizeof *r);
    char next[256], post[512], id[128];
    int next_len = snprintf(next, sizeof next,
                            "GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: %s\r\n\r\n",
                            api_host);
    for (;;) {
        r->fd = connect_api();
        r->len = 0;
        if (r->fd < 0) {
            usleep(50000);
            continue;
        }
        for (;;) {
            if (send_all(r->fd, next, (size_t)next_len) < 0) break;
            int status = response(r, id, sizeof id);
            if (status < 0) break;
            if (status != 200 || !id[0]) continue;
            int n = snprintf(post, sizeof post,
                             "POST /2018-06-01/runtime/invocation/%s/response HTTP/1.1\r\n"
                             "Host: %s\r\nContent-Length: %zu\r\n\r\n%s",
                             id, api_host, sizeof ANSWER - 1, ANSWER);
            if (send_all(r->fd, post, (size_t)n) < 0 || response(r, NULL, 0) < 0) break;
        }
        close(r->fd);
    }
    return NULL;
}

int main(void) {
    const char *where = getenv("AWS_LAMBDA_RUNTIME_API");
    if (!where || strlen(where) >= sizeof api_host) {
        fprintf(stderr, "AWS_LAMBDA_RUNTIME_API is not set\n");
        return 1;
    }
    strcpy(api_host, where);
    char host[64];
    strcpy(host, where);
    char *colon = strrchr(host, ':');
    if (!colon) return 1;
    *colon = 0;
    api.sin_family = AF_INET;
    api.sin_port = htons((unsigned short)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &api.sin_addr) != 1) return 1;
    const char *c = getenv("AWS_LAMBDA_MAX_CONCURRENCY");
    int polls = c ? atoi(c) : 1;
    if (polls < 1) polls = 1;
    if (polls > 256) polls = 256;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    for (int i = 1; i < polls; i++) {
        pthread_t t;
        pthread_create(&t, &attr, poll_loop, NULL);
    }
    poll_loop(NULL);
    return 0;
}
