# tiny-forge controller image: one static binary, CA roots, nothing else. Built by `make image`,
# which compiles target/x86_64-unknown-linux-gnu/release/tiny-forge with crt-static and copies the
# host's CA bundle into target/image/ (the build context only lets those two files in: .dockerignore).
FROM scratch
COPY target/image/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY target/x86_64-unknown-linux-gnu/release/tiny-forge /tiny-forge
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/tiny-forge"]
CMD ["run", "--kubernetes"]
