import numpy as np
n=1000000
X=np.load(f"/tmp/proto/X{n}.npy")
m=X.mean(0)
res={}
rs=[100,200,400,1000,2000,5000]
acc={}
for name in ("img","txt"):
    Q=np.load(f"/tmp/proto/Q{'I' if name=='img' else 'T'}{n}.npy")
    gt=np.load(f"/tmp/proto/gt_{name}{n}.npy")
    # 4-bit quantized query
    lo=Q.min(1,keepdims=True); hi=Q.max(1,keepdims=True); d=(hi-lo)/15
    Q4=lo+np.round((Q-lo)/d)*d
    qs=np.sign(Q-0)  # hamming uses query sign (uncentred)
    ests={k:np.empty((len(Q),n),np.float32) for k in ("ham","asym","rabitq","rabitq4")}
    for a in range(0,n,100000):
        b=a+100000
        Y=X[a:b]-m
        S=np.where(Y>0,1.0,-1.0).astype(np.float32)
        f=(Y*Y).sum(1)/np.abs(Y).sum(1)
        ests["ham"][:,a:b]=qs@S.T
        A=Q@S.T
        ests["asym"][:,a:b]=A
        ests["rabitq"][:,a:b]=A*f
        ests["rabitq4"][:,a:b]=(Q4@S.T)*f
    for k,E in ests.items():
        part=np.argpartition(-E, max(rs), axis=1)[:,:max(rs)]
        vals=np.take_along_axis(E,part,1)
        order=np.argsort(-vals,1); part=np.take_along_axis(part,order,1)
        line=[]
        for r in rs:
            top=part[:,:r]
            rec=np.mean([len(set(gt[i])&set(top[i]))/10 for i in range(len(Q))])
            line.append(f"{r}:{rec:.3f}")
        print(name,k," ".join(line),flush=True)
