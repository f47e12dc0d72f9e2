// cnidriver: a minimal CNI runtime on libcni, for tests and benchmarks.
//
//	cnidriver add|check|del CONFLIST_FILE CONTAINER_ID NETNS_PATH [IFNAME]
//
// Plugins are searched in the directories of CNI_PATH (':'-separated). Results are cached by libcni in
// CNIDRIVER_CACHE_DIR (default: libcni's own, /var/lib/cni). add prints the result as JSON on stdout;
// check and del print nothing on success. On failure the error goes to stderr (a plugin's *types.Error
// as its JSON: code/msg/details) and the exit status is 1.
//
// GC and STATUS are not implemented: libcni 1.1.2 (Debian bookworm) predates them (spec 1.1.0).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

const usage = "usage: cnidriver add|check|del CONFLIST_FILE CONTAINER_ID NETNS_PATH [IFNAME=eth0]"

func fail(err error) {
	var cniErr *types.Error
	if errors.As(err, &cniErr) {
		doc, jerr := json.Marshal(cniErr)
		if jerr == nil {
			fmt.Fprintln(os.Stderr, string(doc))
			os.Exit(1)
		}
	}
	fmt.Fprintln(os.Stderr, err.Error())
	os.Exit(1)
}

func pluginDirs() []string {
	var dirs []string
	for _, dir := range strings.Split(os.Getenv("CNI_PATH"), ":") {
		if dir != "" {
			dirs = append(dirs, dir)
		}
	}
	return dirs
}

func main() {
	if len(os.Args) < 5 || len(os.Args) > 6 {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	command, confFile, containerID, netns := os.Args[1], os.Args[2], os.Args[3], os.Args[4]
	ifName := "eth0"
	if len(os.Args) == 6 {
		ifName = os.Args[5]
	}

	list, err := libcni.ConfListFromFile(confFile)
	if err != nil {
		fail(err)
	}
	netnsPath, err := filepath.Abs(netns)
	if err != nil {
		fail(err)
	}
	cacheDir := os.Getenv("CNIDRIVER_CACHE_DIR")
	cni := libcni.NewCNIConfigWithCacheDir(pluginDirs(), cacheDir, nil)
	rt := &libcni.RuntimeConf{
		ContainerID: containerID,
		NetNS:       netnsPath,
		IfName:      ifName,
		CacheDir:    cacheDir,
	}
	// CNIDRIVER_PORTMAPS: the runtime's port mappings (JSON list), passed as the portMappings capability.
	if pm := os.Getenv("CNIDRIVER_PORTMAPS"); pm != "" {
		var maps []map[string]interface{}
		if err := json.Unmarshal([]byte(pm), &maps); err != nil {
			fail(err)
		}
		rt.CapabilityArgs = map[string]interface{}{"portMappings": maps}
	}
	// CNIDRIVER_ARGS: the runtime's CNI_ARGS ("K=V;K=V"), as containerd's CRI passes K8S_POD_NAME and friends.
	if args := os.Getenv("CNIDRIVER_ARGS"); args != "" {
		for _, pair := range strings.Split(args, ";") {
			if k, v, found := strings.Cut(pair, "="); found {
				rt.Args = append(rt.Args, [2]string{k, v})
			}
		}
	}
	ctx := context.Background()

	switch command {
	case "add":
		result, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail(err)
		}
		if err := result.PrintTo(os.Stdout); err != nil {
			fail(err)
		}
	case "check":
		if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	case "del":
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	default:
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
}
