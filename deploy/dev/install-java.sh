#!/usr/bin/env bash
# Prefetch every Maven artifact the Java client (clients/java) needs to build and
# run its tests offline (`mvn -o test`): dependencies, plugins and their
# dependencies, the Surefire JUnit 5 provider, and the protoc /
# protoc-gen-grpc-java executables for this OS (os-maven-plugin classifier).
# All come from Maven Central into ~/.m2/repository.
#
# Idempotent and quick when nothing changed: a stamp in clients/java/target
# records the pom's hash and is trusted while the key artifacts are still in
# the local repository.
set -euo pipefail
cd "$(dirname "$0")/../../clients/java"

for tool in java mvn; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "install-java.sh: '$tool' not found: install a JDK 17 and Maven 3.8+" >&2
    exit 1
  fi
done

# The local repository: -Dmaven.repo.local in MAVEN_OPTS, else Maven's default.
REPO=$(printf '%s\n' ${MAVEN_OPTS:-} | sed -n 's/^-Dmaven.repo.local=//p' | tail -1)
REPO=${REPO:-$HOME/.m2/repository}
STAMP=target/.prefetched
prop() { sed -n "s:.*<$1>\(.*\)</$1>.*:\1:p" pom.xml | sed -n 1p; }
GRPC=$(prop grpc.version)
PROTOBUF=$(prop protobuf.version)
want="$(sha256sum pom.xml | cut -d' ' -f1) $REPO"
markers=(
  "$REPO/io/grpc/grpc-netty-shaded/$GRPC/grpc-netty-shaded-$GRPC.jar"
  "$REPO/com/google/protobuf/protoc/$PROTOBUF"
  "$REPO/io/grpc/protoc-gen-grpc-java/$GRPC"
  "$REPO/org/apache/maven/surefire/surefire-junit-platform"
)
fresh=1
[ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] || fresh=0
for m in "${markers[@]}" target/classpath.txt; do [ -e "$m" ] || fresh=0; done
if [ "$fresh" = 1 ]; then
  exit 0
fi

echo "install-java.sh: prefetching the Java client's Maven artifacts (one-time, about a minute)"
mvn -B -q dependency:go-offline
# Plugins resolved only when they run (protoc executables, compiler, jar, install...);
# this also puts the client into the local repository, as its README says.
mvn -B -q -DskipTests install
# The classpath file the README example runs with.
mvn -B -q dependency:build-classpath -Dmdep.outputFile=target/classpath.txt
# Proof that everything is here: compile the tests offline.
mvn -B -q -o test-compile
mkdir -p target
echo "$want" > "$STAMP"
echo "install-java.sh: done"
