module github.com/mqkit/mq

go 1.24
