// Command kube-world runs one component of a real Kubernetes control plane, chosen by its first
// argument, the way k3s and hyperkube put several components in one binary: one link instead of four,
// one file to cache. The rest of the arguments are the component's own flags, unchanged.
//
//	kube-world etcd --data-dir ... --listen-client-urls ...
//	kube-world kube-apiserver --etcd-servers ... --authorization-mode=Node,RBAC ...
//	kube-world kube-controller-manager --kubeconfig ...
//	kube-world kube-scheduler --kubeconfig ...
//	kube-world version
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	"k8s.io/component-base/version"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: kube-world etcd|kube-apiserver|kube-controller-manager|kube-scheduler|version [flags]")
		os.Exit(2)
	}
	component, args := os.Args[1], os.Args[2:]
	var command *cobra.Command
	switch component {
	case "etcd":
		// etcdmain parses os.Args itself, program name first.
		etcdmain.Main(append([]string{"etcd"}, args...))
		return
	case "kube-apiserver":
		command = apiserver.NewAPIServerCommand()
	case "kube-controller-manager":
		command = controllermanager.NewControllerManagerCommand()
	case "kube-scheduler":
		command = scheduler.NewSchedulerCommand()
	case "version":
		fmt.Println(version.Get().GitVersion)
		return
	default:
		fmt.Fprintf(os.Stderr, "kube-world: unknown component %q (want etcd, kube-apiserver, kube-controller-manager, kube-scheduler or version)\n", component)
		os.Exit(2)
	}
	command.SetArgs(args)
	os.Exit(cli.Run(command))
}
